"""LoRA's modern options (init, rsLoRA, LoRA+) and the catalogue through the trainer: every init is the base
model at init and reloads exactly; data-driven inits read the given batches; conv refusals are clear;
LoRA+ scales B's learning rate; AdaLoRA and LoRA options train from the CLI and are recorded resolved."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from adapters import MethodError, apply_method, create_backbone, merge_method
from adapters.backbones import TINY_CNN, TINY_VIT
from adapters.io import AdapterConfig, load_adapter, save_adapter
from adapters.methods.lora_init import INITS, init_batches
from tests.helpers import write_shapes
from trainer.cli import parse_config
from trainer.config import ConfigError
from trainer.loops.optim import build_optimizer


def vit():
    torch.manual_seed(0)
    return create_backbone(TINY_VIT, 3, pretrained=False).eval()


def batches(n=3):
    g = torch.Generator().manual_seed(4)
    return [(torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 0])) for _ in range(n)]


@pytest.mark.parametrize("init", [pytest.param(i, marks=() if i in ("default", "pissa") else pytest.mark.slow)
                                  for i in INITS])
def test_every_init_is_identity_and_reloads_exactly(init, tmp_path):
    base = vit()
    x = batches(1)[0][0]
    with init_batches(batches()):
        model = apply_method(copy.deepcopy(base), "lora", init=init, rslora=init == "pissa")
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), rtol=0, atol=1e-5)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for xb, yb in batches(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        y = model(x)
    save_adapter(model, tmp_path, AdapterConfig(method="lora", backbone=TINY_VIT, num_classes=3))
    loaded, cfg = load_adapter(tmp_path, model=copy.deepcopy(base))  # no data needed to reload
    assert cfg.hparams["init"] == init and cfg.hparams["targets"] == "qv"  # recorded resolved
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y, rtol=0, atol=1e-5)
        torch.testing.assert_close(merge_method(model)(x), y, rtol=1e-5, atol=1e-5)


def test_data_driven_init_without_data_and_conv_refusals_are_clear():
    with pytest.raises(MethodError, match="data-driven"):
        apply_method(vit(), "lora", init="eva")
    with pytest.raises(MethodError, match="Linear layers only"):
        apply_method(create_backbone(TINY_CNN, 3, pretrained=False), "lora", init="pissa")


def test_rslora_scales_by_sqrt_rank():
    model = apply_method(vit(), "lora", rank=4, alpha=8, rslora=True)
    scalings = {m.scaling["default"] for m in model.modules() if hasattr(m, "scaling") and "default" in m.scaling}
    assert scalings == {8 / 4 ** 0.5}


def test_loraplus_gives_b_the_ratio():
    model = apply_method(vit(), "lora")
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.0, optimizer="loraplus", loraplus_lr_ratio=16)
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    assert {lr for n, lr in lrs.items() if ".lora_B." in n} == {1.6e-2}
    assert {lr for n, lr in lrs.items() if ".lora_A." in n} == {1e-3}
    with pytest.raises(ValueError, match="LoRA B"):
        build_optimizer(apply_method(vit(), "bitfit"), 1e-3, 0.0, optimizer="loraplus")
    with pytest.raises(ConfigError, match="loraplus"):
        parse_config(["--method", "bitfit", "--data-dir", "x", "--optimizer", "loraplus"])


def test_cli_flags_for_every_method_hparam():
    from trainer.cli import build_parser

    text = build_parser().format_help()
    for flag in ("--lora-init", "--lora-rslora", "--optimizer", "--loraplus-lr-ratio", "--adalora-target-r",
                 "--fact-tk-rank", "--mona-bottleneck", "--prefix-tuning-num-prefix", "--conv-adapter-reduction",
                 "--oft-oft-block-size"):
        assert flag in text, flag


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ["--method", "adalora"],
    ["--method", "lora", "--lora-init", "eva", "--lora-rslora", "true", "--optimizer", "loraplus"],
    ["--method", "fact_tk"],
])
def test_trains_from_the_cli_and_records_resolved_values(argv, tmp_path):
    from trainer.loops.classify import run

    data = write_shapes(tmp_path / "shapes", per_class=8)
    cfg = parse_config([*argv, "--dataset", "imagefolder", "--data-dir", str(data), "--backbone", TINY_VIT,
                        "--no-pretrained", "--epochs", "2", "--batch-size", "8", "--img-size", "32",
                        "--output-dir", str(tmp_path / "run"), "--num-workers", "0", "--bootstrap-resamples", "0"])
    run(cfg)
    saved = json.loads(next((tmp_path / "run").rglob("medpeft.json")).read_text())
    hp = saved["hparams"]
    assert "auto" not in map(str, hp.values())
    if cfg.method == "adalora":
        assert hp["total_step"] > 0 and hp["rank_pattern"]
    if "--optimizer" in argv:
        assert saved["training"]["optimizer"] == "loraplus" and saved["training"]["loraplus_lr_ratio"] == 16.0
