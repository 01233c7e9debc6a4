"""The About tab: what PEFT is, how to train an adapter, the API, the citation and the disclaimer."""
from __future__ import annotations

import gradio as gr

from adapters.io import PAPER_CITATION
from trainer.jobs.private import duration_text

from ..views import DISCLAIMER


class AboutTab:
    def __init__(self, ctx=None):
        settings = getattr(getattr(ctx, "state", None), "settings", None)
        with gr.Tab("About", id="about"):
            if settings is not None:
                self.mode_md = gr.Markdown(mode_markdown(settings), elem_id="about-mode")
            gr.Markdown(about_markdown())


def mode_markdown(settings) -> str:
    """Which mode the server runs in, and what that means for a visitor."""
    if not settings.is_public:
        return ("## Mode: local\n\nSingle user on this machine (listening on a loopback address): every adapter "
                "in the adapters folder is listed, and the Train tab may read any server folder"
                + (" under `MEDPEFT_DATA_ROOTS`." if settings.data_roots else "."))
    why = ("on a Hugging Face Space" if settings.space_id else
           "listening on a public address" if settings.public is None else "asked for (--public)")
    ttl = settings.private_ttl
    keep = duration_text(ttl)
    owner = ("your Hugging Face account once you sign in (otherwise this browser session)" if settings.oauth
             else "this browser session (a reload starts a new one)")
    data = ("registered datasets only from the server's data roots" if settings.data_roots
            else "uploaded zips only")
    return (f"## Mode: public\n\nThis server is shared ({why}). Your uploads, training runs and adapters belong to "
            f"{owner}: no other visitor can list, use or download them, and they are deleted {keep} after "
            f"training (download the zip or push to your Hub account to keep one). The Train tab reads {data}. "
            "The operator's adapters are listed for everyone. Temporary files are deleted after "
            f"{duration_text(settings.cache_ttl)}; the server keeps the page state of the "
            f"{settings.state_capacity} most recent visitors (an older page reloads its lists; it never gets "
            "another visitor's result).")


def about_markdown() -> str:
    return f"""
## What is PEFT?

Parameter-efficient fine-tuning adapts a large pretrained model to a new task by training only a
small set of parameters (biases, normalisation scales, low-rank updates, small adapters or prompt
tokens) while the backbone stays frozen. Dutt et al. (MIDL 2024) benchmark 16 PEFT methods on
CNNs, ViTs and the Stable Diffusion U-Net across medical classification and text-to-image tasks
and find that PEFT often matches or beats full fine-tuning, especially with little data, at a
fraction of the trainable parameters. Each adapter here stores only those trained tensors (often
well under 1% of the model) next to the base backbone's name.

## Train an adapter

On the **Train** tab: upload a zip with one folder per class (or pick a registered dataset on the
server), press *Train*, watch the validation curve, and use the adapter on the Classify tab when it
finishes. Or from the command line:

```bash
python -m trainer --method lora --dataset ham10000 --data-dir /data/HAM10000 --seeds 0 1 2
python -m trainer --method ssf --dataset breastus --data-dir /data/BUSI --backbone resnet50.a1_in1k
```

Runs write `results.json` and an `adapter/` folder below the output directory (default `runs/`);
this app finds both (press *Rescan adapters* / *Refresh*). Share adapters on the Hugging Face Hub
with `--push-to-hub ORG/NAME` and list them in `MEDPEFT_HUB_ADAPTERS` to load them here.

## API

Every action is callable with `gradio_client`: `/classify`, `/compare`, `/generate`,
`/leaderboard`, `/adapters`, `/rescan_adapters`, `/filter_adapters`, and for training `/check_dataset`,
`/train` (streams progress: use `client.submit`), `/stop_training`, `/push_adapter`.

```python
from gradio_client import Client, handle_file
client = Client("http://127.0.0.1:7860/")
probs, seen, heatmap, details = client.predict(handle_file("scan.dcm"), "<adapter key>", True, api_name="/classify")
```

## Citation

```bibtex
{PAPER_CITATION}
```

## Disclaimer

{DISCLAIMER} Predictions come from research models trained on public datasets, can be wrong, and
must not be used for clinical decisions. The demo adapter predicts ImageNet classes and is not medical.
"""
