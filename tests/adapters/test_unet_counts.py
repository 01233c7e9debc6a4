"""``python -m adapters list --unet sd15``: Stable Diffusion 1.5's U-Net counts (built from its config on
the meta device, no weights) against Dutt et al. 2024, Table 4. The paper's M-counts are 10x too small:
its "Attention (26.7M)" and "Bias+Norm+Attention (26.7M)" rows are the whole Transformer2D blocks."""
from __future__ import annotations

import json
from contextlib import redirect_stdout
from io import StringIO

import pytest

from adapters.__main__ import main


@pytest.mark.slow
def test_sd15_listing_counts_and_paper_rows():
    out = StringIO()
    with redirect_stdout(out):
        assert main(["list", "--unet", "sd15", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(out.getvalue())}
    trainable = {m: r["trainable"] for m, r in rows.items()}
    assert trainable == {
        "full": 859_520_964,  # paper 85.9M
        "attention_blocks": 267_239_360,  # paper "Attention" 26.7M (x10)
        "bias_norm_attention_blocks": 267_421_124,  # paper "Bias+Norm+Attention" 26.7M (x10)
        "attention": 93_536_640,  # q/k/v/out projections only: no paper row
        "bias_norm_attention": 93_955_524,
        "bias": 343_684,  # paper 343K
        "norm": 200_320,  # paper 200K
        "bias_norm": 443_844,  # paper 443K
        "lora": 1_594_368,  # rank 8; rank 4 = 797,184, the paper's 797K
        "svdiff": 222_696,  # paper 21.4K: no natural subset gives it
        "difffit": 481_284,
        # peft's LyCORIS/OFT family on the same attention projections (their defaults: no paper row)
        "loha": 3_188_736,  # two rank-8 Hadamard factor pairs: exactly twice rank-8 LoRA (checked below)
        "lokr": 138_592,
        "oft": 1_541_568,
        "boft": 497_664,
    }
    assert trainable["loha"] == 2 * trainable["lora"]  # analytic: 2 * r * (in + out) per projection
    paper = {m: (r["paper_name"], r["reported"]) for m, r in rows.items()}
    assert paper["attention_blocks"] == ("attention", "26.7M")
    assert paper["bias_norm_attention_blocks"] == ("bias_norm_attention", "26.7M")
    assert paper["attention"] == (None, None) and paper["bias_norm_attention"] == (None, None)
    assert paper["bias"] == ("bias", "343K") and paper["full"] == ("full", "85.9M")
    assert all(r["mergeable"] and r["identity_at_init"] for r in rows.values())
