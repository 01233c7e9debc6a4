"""MedPEFT Gradio app: classify medical images with PEFT adapters, generate chest X-rays from
report text, and compare PEFT methods against Dutt et al. 2024.

    python app.py [--adapters-dir runs] [--host 127.0.0.1] [--port 7860] [--share]

Environment: MEDPEFT_ADAPTERS_DIR (default ``runs``), MEDPEFT_HUB_ADAPTERS (comma-separated Hub repo
ids of adapters), MEDPEFT_SD_BASE (Stable Diffusion pipeline: Hub id or local folder),
MEDPEFT_RESULTS_DIRS (extra folders of results.json, os.pathsep-separated), HF_TOKEN.

The handlers are thin: models live in ``trainer/infer.py``, results in ``trainer/results.py``.
Research use only: not a medical device.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from adapters.io import PAPER_CITATION  # noqa: E402
from trainer import results as R  # noqa: E402
from trainer.infer import (AdapterList, Generator, InferenceError, Predictor, create_demo_adapter,  # noqa: E402
                           example_reports, find_adapters)

log = logging.getLogger("medpeft.app")

FILE_TYPES = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"]
ALL = "All"
NO_ADAPTER = "(none: base pipeline only)"
DISCLAIMER = "Research use only: not a medical device, not for diagnosis."

CSS = """
.medpeft-header h1 {margin-bottom: 0.1em;}
.medpeft-header p {margin-top: 0; color: var(--body-text-color-subdued);}
.medpeft-note {font-size: 0.9em; color: var(--body-text-color-subdued);}
"""


def theme() -> gr.themes.Base:
    # System fonts only: nothing is fetched from a font CDN (the app must work offline).
    return gr.themes.Soft(primary_hue="teal", secondary_hue="slate",
                          font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial",
                                "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"])


# ------------------------------------------------------------------------------------ errors
def user_errors(action: str) -> Callable:
    """Turn expected failures into a ``gr.Error`` with a plain message (no traceback, server keeps
    serving); anything unexpected is logged with its traceback and reported briefly."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            from adapters import BackboneError, MethodError
            from trainer.data import DataError

            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except (DataError, InferenceError, MethodError, BackboneError) as e:
                raise gr.Error(str(e), title=f"Could not {action}", print_exception=False) from None
            except Exception as e:  # a bug: keep serving, tell the user plainly, log for the developer
                log.exception("unexpected error while trying to %s", action)
                raise gr.Error(f"unexpected {type(e).__name__} while trying to {action}: {e}",
                               title=f"Could not {action}", print_exception=False) from None

        return inner

    return wrap


def load_upload(path: str):
    """The data layer's ``load_image`` on an upload; messages name the file as uploaded, not the
    server's temporary path."""
    from trainer.data import DataError, load_image

    try:
        return load_image(path)
    except DataError as e:
        raise DataError(str(e).replace(str(path), Path(path).name)) from None


# ------------------------------------------------------------------------------------ examples
def write_examples(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """Real example images written once: CT and MR DICOM from pydicom's test files, a retinal
    fundus photograph from scikit-image. Returns (path, label) pairs; missing sources are skipped."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    try:
        import shutil

        import pydicom.examples

        for name, label in (("ct", "CT slice (DICOM)"), ("mr", "MR slice (DICOM)")):
            dst = folder / f"{name}_small.dcm"
            if not dst.exists():
                shutil.copyfile(pydicom.examples.get_path(name), dst)
            out.append((str(dst), label))
    except Exception as e:  # pragma: no cover - pydicom is a requirement
        log.warning("DICOM examples unavailable: %s", e)
    try:
        dst = folder / "retina.png"
        if not dst.exists():
            from PIL import Image
            from skimage import data

            Image.fromarray(data.retina()).resize((512, 512), Image.BICUBIC).save(dst)
        out.append((str(dst), "retinal fundus photo (PNG)"))
    except Exception as e:
        log.warning("retina example unavailable (scikit-image): %s", e)
    return out


class OutputFiles:
    """Output images as unique PNG files (the newest ``keep`` are kept).

    Returning PIL images would make gradio write each one to a path named by its content hash,
    rewriting the same file in place when concurrent requests produce the same image while
    another response is still streaming it (a truncated download). A unique file per response
    is copied into gradio's cache atomically instead.
    """

    def __init__(self, folder: str | os.PathLike, keep: int = 512, min_side: int = 192):
        import collections

        self.min_side = min_side
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._files: collections.deque[Path] = collections.deque()
        self._lock = threading.Lock()

    def save(self, image, stem: str) -> str | None:
        if image is None:
            return None
        import uuid

        path = self.folder / f"{stem}-{uuid.uuid4().hex[:12]}.png"
        if min(image.size) < self.min_side:  # tiny model inputs: enlarge for display, pixels kept (nearest)
            scale = -(-self.min_side // min(image.size))
            image = image.resize((image.width * scale, image.height * scale), resample=0)
        image.save(path, format="PNG")
        with self._lock:
            self._files.append(path)
            while len(self._files) > self.keep:
                self._files.popleft().unlink(missing_ok=True)
        return str(path)


# ------------------------------------------------------------------------------------ state
class AppState:
    """The adapters the app knows (rescanned on request) and the shared predictor/generator."""

    def __init__(self, adapters_dir: str | os.PathLike, hub_repos: list[str] | None, predictor: Predictor,
                 generator: Generator, results_dirs: list[str]):
        self.adapters_dir = Path(adapters_dir)
        self.hub_repos = hub_repos
        self.predictor = predictor
        self.generator = generator
        self.results_dirs = results_dirs
        self.hub_endpoint: str | None = None
        self._lock = threading.Lock()
        self.adapters = AdapterList()

    def scan(self) -> AdapterList:
        found = find_adapters(self.adapters_dir, self.hub_repos, endpoint=self.hub_endpoint)
        with self._lock:
            self.adapters = found
        return found

    def classifiers(self) -> list:
        return [a for a in self.adapters if a.task != "generation"]

    def generators(self) -> list:
        return [a for a in self.adapters if a.task == "generation"]

    def get(self, key: str | None, kind: str = "classification"):
        if not key:
            raise InferenceError("choose an adapter first" if self.classifiers() else
                                 f"no adapters found in {self.adapters_dir}: train one with python -m trainer")
        a = self.adapters.get(key)
        if a is None:
            raise InferenceError(f"unknown adapter {key!r}: press 'Rescan adapters' or choose one from the list")
        if kind == "classification" and a.task == "generation":
            raise InferenceError(f"{a.name} is a text-to-image adapter: use it on the Generate tab")
        return a

    def result_rows(self) -> pd.DataFrame:
        return R.all_rows([self.adapters_dir, *self.results_dirs])


def _choices(adapters) -> list[tuple[str, str]]:
    return [(a.label(), a.key) for a in adapters]


def _filter(adapters, dataset: str | None, task: str | None):
    return [a for a in adapters if (not dataset or dataset == ALL or a.dataset == dataset)
            and (not task or task == ALL or a.task == task)]


# ------------------------------------------------------------------------------------ the app
def build_app(adapters_dir: str | os.PathLike | None = None, *, hub_repos: list[str] | None = None,
              predictor: Predictor | None = None, generator: Generator | None = None, create_demo: bool = True,
              sd_base: str | None = None, results_dirs: list[str] | None = None,
              examples_dir: str | os.PathLike | None = None, hub_endpoint: str | None = None) -> gr.Blocks:
    """The Gradio app. ``adapters_dir`` default: MEDPEFT_ADAPTERS_DIR or ``runs``. With
    ``create_demo`` and no adapter anywhere, a demo adapter (ImageNet classes) is written there."""
    adapters_dir = Path(adapters_dir or os.environ.get("MEDPEFT_ADAPTERS_DIR", "runs"))
    if results_dirs is None:
        results_dirs = [d for d in os.environ.get("MEDPEFT_RESULTS_DIRS", "").split(os.pathsep) if d]
    sd_base = os.environ.get("MEDPEFT_SD_BASE", "") if sd_base is None else sd_base
    state = AppState(adapters_dir, hub_repos, predictor or Predictor(), generator or Generator(), results_dirs)
    state.hub_endpoint = hub_endpoint
    found = state.scan()
    if create_demo and not state.classifiers():
        try:
            create_demo_adapter(adapters_dir)
            found = state.scan()
            found.messages.append(f"no adapters were found, so a demo adapter was created in {adapters_dir} "
                                  "(ImageNet classes, not medical)")
        except Exception as e:
            log.exception("could not create the demo adapter")
            found.messages.append(f"no adapters found and the demo adapter could not be created: {e}")
    for m in found.messages:
        log.warning(m)
    first = next(iter(state.classifiers()), None)
    if first is not None:  # warm the default adapter in the background: the first click is then quick
        def warm():
            try:
                from PIL import Image

                state.predictor.predict(first, Image.new("RGB", (256, 256), (128, 128, 128)))
            except Exception as e:  # reported again, plainly, when the user picks it
                log.warning("could not pre-load %s: %s", first.key, e)

        threading.Thread(target=warm, name="medpeft-warm", daemon=True).start()
    examples_dir = Path(examples_dir or Path(tempfile.gettempdir()) / "medpeft-app-examples")
    examples = write_examples(examples_dir)
    outputs = OutputFiles(tempfile.mkdtemp(prefix="medpeft-app-outputs-"))
    reports, reports_msg = example_reports()

    rows0 = state.result_rows()

    def status_text(adapters: AdapterList) -> str:
        n_cls = sum(a.task != "generation" for a in adapters)
        n_gen = len(adapters) - n_cls
        text = f"{n_cls} classification and {n_gen} generation adapter(s) from `{state.adapters_dir}`"
        if state.hub_repos or os.environ.get("MEDPEFT_HUB_ADAPTERS"):
            text += " and the Hub"
        if adapters.messages:
            text += "\n\n" + "\n".join(f"- {m}" for m in adapters.messages)
        return text

    def datasets_of(adapters) -> list[str]:
        return [ALL] + sorted({a.dataset for a in adapters if a.task != "generation"})

    def default_key(adapters) -> str | None:
        cls = [a for a in adapters if a.task != "generation"]
        return cls[0].key if cls else None

    # -------------------------------------------------------------- handlers (thin)
    @user_errors("classify the image")
    def classify(file: str | None, adapter_key: str | None, gradcam: bool = True):
        if not file:
            raise InferenceError("upload an image (PNG, JPEG, TIFF, BMP) or a DICOM file first")
        adapter = state.get(adapter_key)
        image = load_upload(file)
        pred = state.predictor.predict(adapter, image)
        heat = None
        if gradcam:
            names = list(pred.probs)
            heat = state.predictor.explain(adapter, image, names.index(pred.top[0]))
        lm = state.predictor.load(adapter)
        top, p = pred.top
        details = [f"**{adapter.name}**: {adapter.method} on {adapter.backbone} ({adapter.dataset}, {adapter.task})",
                   f"top class **{top}** ({100 * p:.1f}%), {pred.latency_ms:.0f} ms "
                   f"(preprocessing + forward, {'merged weights' if lm.merged else 'unmerged'})"]
        if lm.note:
            details.append(lm.note)
        if adapter.is_demo:
            details.insert(0, "⚠️ **Demo adapter: ImageNet classes, not medical.** Train a real adapter with "
                              "`python -m trainer` (see About).")
        if adapter.task == "multilabel":
            details.append("multi-label: independent sigmoid probabilities (they need not sum to 1)")
        details.append(DISCLAIMER)
        return (pred.probs, outputs.save(pred.seen, "input"), outputs.save(heat, "gradcam"),
                "\n\n".join(details))

    @user_errors("compare adapters")
    def compare(file: str | None, adapter_keys: list[str] | None):
        if not file:
            raise InferenceError("upload an image first")
        if not adapter_keys:
            raise InferenceError("tick at least one adapter to compare")
        image = load_upload(file)
        rows = []
        for key in adapter_keys:
            adapter = state.get(key)
            row = {"adapter": adapter.name, "method": adapter.method, "backbone": adapter.backbone,
                   "dataset": adapter.dataset}
            try:
                pred = state.predictor.predict(adapter, image)
                top, p = pred.top
                row.update({"top class": top, "probability": round(p, 4), "latency ms": round(pred.latency_ms, 1),
                            "note": "demo: ImageNet classes" if adapter.is_demo else ""})
            except (InferenceError, ValueError) as e:  # one failing adapter must not hide the others
                row.update({"top class": "", "probability": None, "latency ms": None, "note": f"error: {e}"})
            rows.append(row)
        return pd.DataFrame(rows, columns=["adapter", "method", "backbone", "dataset", "top class", "probability",
                                           "latency ms", "note"])

    def filter_adapters(dataset: str, task: str, current: str | None):
        subset = _filter(state.classifiers(), dataset, task)
        keys = [a.key for a in subset]
        return gr.update(choices=_choices(subset), value=current if current in keys else (keys[0] if keys else None))

    def rescan(dataset: str, task: str, current: str | None, scan: bool = True):
        adapters = state.scan() if scan else state.adapters
        subset = _filter(state.classifiers(), dataset, task)
        keys = [a.key for a in subset]
        # Keep the server-side components in step so API calls validate against the new list.
        compare_box.choices = _choices(state.classifiers())
        gen_adapter.choices = [(NO_ADAPTER, "")] + _choices(state.generators())
        return (gr.update(choices=datasets_of(adapters), value=dataset if dataset in datasets_of(adapters) else ALL),
                gr.update(choices=_choices(subset), value=current if current in keys else (keys[0] if keys else None)),
                gr.update(choices=_choices(state.classifiers()), value=[]),
                gr.update(choices=[(NO_ADAPTER, "")] + _choices(state.generators())),
                status_text(adapters))

    def list_adapters() -> list[dict]:
        """Rescan and list every adapter (local and Hub) with its task, method, backbone, classes and test F1."""
        return [a.to_dict() for a in state.scan()]

    @user_errors("generate an image")
    def generate(prompt: str, base: str, adapter_key: str | None, steps: float, guidance: float, seed: float):
        adapter_dir = None
        if adapter_key:
            adapter = state.get(adapter_key, kind="generation")
            if adapter.task != "generation":
                raise InferenceError(f"{adapter.name} is a classification adapter, not a text-to-image one")
            adapter_dir = str(adapter.folder)
            if not (base or "").strip():  # the pipeline the adapter was trained on
                bb = adapter.config.backbone or ""
                base = str((adapter.config.training or {}).get("base_model")
                           or (bb if "/" in bb or Path(bb).expanduser().is_dir() else ""))
        image = state.generator.generate(prompt, base, adapter_dir, int(steps), float(guidance), int(seed))
        return outputs.save(image, "generated")

    def leaderboard_view(task, backbone, dataset, method, source):
        df = state.result_rows()
        d = R.filter_rows(df, task=task, backbone=backbone, dataset=dataset, method=method, source=source)
        vol = R.data_volume_plot(d)
        return (R.leaderboard(d), R.summary(d), R.pareto_plot(d),
                gr.update(value=vol, visible=vol is not None),
                _filter_update(df, "task", task), _filter_update(df, "backbone", backbone),
                _filter_update(df, "dataset", dataset), _filter_update(df, "method", method),
                _filter_update(df, "source", source))

    # -------------------------------------------------------------- layout
    with gr.Blocks(title="MedPEFT", analytics_enabled=False) as demo:
        with gr.Column(elem_classes="medpeft-header"):
            gr.Markdown("# MedPEFT\nParameter-efficient fine-tuning for medical image analysis, after Dutt et al. "
                        f"(MIDL 2024). {DISCLAIMER}")
        with gr.Tabs():
            # ---------------------------------------------------------- Classify
            with gr.Tab("Classify", id="classify"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5):
                        image_in = gr.File(label="Image: PNG, JPEG, TIFF, BMP or DICOM (.dcm)", file_types=FILE_TYPES,
                                           type="filepath", height=140, elem_id="image-input")
                        if examples:
                            gr.Examples(examples=[[p] for p, _ in examples], inputs=[image_in],
                                        example_labels=[lbl for _, lbl in examples],
                                        label="Examples: real CT/MR DICOM (pydicom) and a fundus photo (scikit-image)")
                        with gr.Row():
                            dataset_dd = gr.Dropdown(datasets_of(found), value=ALL, label="Dataset", scale=1)
                            task_dd = gr.Dropdown([ALL, "classification", "multilabel"], value=ALL, label="Task",
                                                  scale=1)
                        adapter_dd = gr.Dropdown(_choices(state.classifiers()), value=default_key(found),
                                                 label="Adapter (name · method · backbone · test F1 · trainable)",
                                                 allow_custom_value=True, elem_id="adapter-dropdown")
                        gradcam_cb = gr.Checkbox(value=True, label="Grad-CAM heat map for the top class")
                        with gr.Row():
                            classify_btn = gr.Button("Classify", variant="primary", elem_id="classify-button")
                            rescan_btn = gr.Button("Rescan adapters", variant="secondary")
                        status_md = gr.Markdown(status_text(found), elem_classes="medpeft-note")
                    with gr.Column(scale=6):
                        label_out = gr.Label(num_top_classes=5, label="Prediction", elem_id="prediction")
                        with gr.Row():
                            seen_out = gr.Image(label="Model input", type="filepath",
                                                height=260, format="png", interactive=False)
                            cam_out = gr.Image(label="Grad-CAM (top class)", type="filepath", height=260, format="png",
                                               interactive=False)
                        details_out = gr.Markdown(elem_classes="medpeft-note")
                with gr.Accordion("Compare adapters on the same image", open=False):
                    compare_box = gr.CheckboxGroup(_choices(state.classifiers()), label="Adapters to compare")
                    compare_btn = gr.Button("Compare", variant="secondary")
                    compare_out = gr.Dataframe(label="Comparison", interactive=False, wrap=True,
                                               column_widths=["22%", "10%", "18%", "11%", "13%", "9%", "8%", "9%"])

            # ---------------------------------------------------------- Generate
            with gr.Tab("Generate", id="generate"):
                gr.Markdown("Generate a chest X-ray from report text with Stable Diffusion, optionally with a "
                            "PEFT adapter of its U-Net (Dutt et al., Table 4). Needs a diffusers pipeline: a Hub "
                            "id (online) or a local folder; set `MEDPEFT_SD_BASE` to pre-fill it.")
                if importlib.util.find_spec("trainer.generate") is None:
                    gr.Markdown("⚠️ Text-to-image generation is not available in this installation "
                                "(`trainer/generate.py` is missing).", elem_classes="medpeft-note")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5):
                        prompt_in = gr.Textbox(label="Report text (prompt)", lines=4,
                                               placeholder="e.g. No acute cardiopulmonary abnormality.")
                        if reports:
                            gr.Examples(examples=[[r] for r in reports], inputs=[prompt_in],
                                        label="Real IU chest X-ray report impressions (torchxrayvision)")
                        else:
                            gr.Markdown(f"Example reports are unavailable: {reports_msg}.", elem_classes="medpeft-note")
                        base_in = gr.Textbox(label="Base pipeline (Hub id or local folder)", value=sd_base,
                                             placeholder="owner/stable-diffusion-model or /path/to/pipeline")
                        gen_adapter = gr.Dropdown([(NO_ADAPTER, "")] + _choices(state.generators()), value="",
                                                  label="Generation adapter", allow_custom_value=True)
                        with gr.Row():
                            steps_in = gr.Slider(1, 100, value=25, step=1, label="Steps")
                            guidance_in = gr.Slider(0.0, 15.0, value=7.5, step=0.5, label="Guidance scale")
                            seed_in = gr.Number(value=0, precision=0, label="Seed")
                        gen_btn = gr.Button("Generate", variant="primary")
                    with gr.Column(scale=5):
                        gen_out = gr.Image(label="Generated image", type="filepath", format="png", height=420,
                                           interactive=False)
                        gr.Markdown(DISCLAIMER + " Generated images are synthetic.", elem_classes="medpeft-note")

            # ---------------------------------------------------------- Leaderboard
            with gr.Tab("Leaderboard", id="leaderboard"):
                gr.Markdown("F1 macro (%, mean ± std) per method: the numbers Dutt et al. 2024 report, and your "
                            f"own runs (every `results.json` below `{adapters_dir}`). FID for generation (lower is "
                            "better). Click a column header to sort.")
                with gr.Row():
                    f_task = gr.Dropdown(_options(rows0, "task"), multiselect=True, label="Task")
                    f_backbone = gr.Dropdown(_options(rows0, "backbone"), multiselect=True, label="Backbone")
                    f_dataset = gr.Dropdown(_options(rows0, "dataset"), multiselect=True, label="Dataset")
                    f_method = gr.Dropdown(_options(rows0, "method"), multiselect=True, label="Method")
                    f_source = gr.Dropdown(_options(rows0, "source"), multiselect=True, label="Source")
                refresh_btn = gr.Button("Refresh (re-read results)", variant="secondary", size="sm")
                board = gr.Dataframe(R.leaderboard(rows0), label="Results", interactive=False, wrap=True,
                                     max_height=420, show_search="search",
                                     column_widths=["12%", "9%", "11%", "12%", "7%", "9%", "8%", "15%", "8%", "7%"])
                gr.Markdown("**Summary** (as in the paper's tables): average score over datasets and average rank "
                            "(methods ranked within each backbone × dataset; 1 = best).")
                summary_out = gr.Dataframe(R.summary(rows0), label="Average score and rank per method",
                                           interactive=False, max_height=360, wrap=True,
                                           column_widths=["15%", "13%", "10%", "7%", "12%", "6%", "8%", "9%", "8%",
                                                          "9%"])
                pareto_out = gr.Plot(R.pareto_plot(rows0), label="Score vs trainable parameters")
                vol0 = R.data_volume_plot(rows0)
                volume_out = gr.Plot(vol0, label="Score vs training data volume", visible=vol0 is not None)

            # ---------------------------------------------------------- About
            with gr.Tab("About", id="about"):
                gr.Markdown(about_markdown())

        # -------------------------------------------------------------- events
        classify_btn.click(classify, [image_in, adapter_dd, gradcam_cb], [label_out, seen_out, cam_out, details_out],
                           api_name="classify")
        compare_btn.click(compare, [image_in, compare_box], [compare_out], api_name="compare")
        gr.on([dataset_dd.change, task_dd.change], filter_adapters, [dataset_dd, task_dd, adapter_dd], [adapter_dd],
              api_name="filter_adapters", queue=False)
        rescan_btn.click(rescan, [dataset_dd, task_dd, adapter_dd],
                         [dataset_dd, adapter_dd, compare_box, gen_adapter, status_md], api_name="rescan_adapters")
        demo.load(functools.partial(rescan, scan=False), [dataset_dd, task_dd, adapter_dd],
                  [dataset_dd, adapter_dd, compare_box, gen_adapter, status_md], api_name="current_adapters",
                  queue=False)
        gr.api(list_adapters, api_name="adapters")
        gen_btn.click(generate, [prompt_in, base_in, gen_adapter, steps_in, guidance_in, seed_in], [gen_out],
                      api_name="generate")
        gr.on([refresh_btn.click, f_task.input, f_backbone.input, f_dataset.input, f_method.input, f_source.input],
              leaderboard_view, [f_task, f_backbone, f_dataset, f_method, f_source],
              [board, summary_out, pareto_out, volume_out, f_task, f_backbone, f_dataset, f_method, f_source],
              api_name="leaderboard")
    demo.queue(default_concurrency_limit=2, max_size=64)
    demo.medpeft_state = state  # for tests and scripts
    demo.medpeft_allowed_paths = [str(examples_dir), str(outputs.folder)]
    return demo


def _options(df: pd.DataFrame, col: str) -> list[str]:
    return sorted({str(v) for v in df[col].dropna()}) if len(df) else []


def _filter_update(df: pd.DataFrame, col: str, value) -> Any:
    return gr.update(choices=_options(df, col), value=value or [])


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

```bash
python -m trainer --method lora --dataset ham10000 --data-dir /data/HAM10000 --seeds 0 1 2
python -m trainer --method ssf --dataset breastus --data-dir /data/BUSI --backbone resnet50.a1_in1k
```

Runs write `results.json` and an `adapter/` folder below the output directory (default `runs/`);
this app finds both (press *Rescan adapters* / *Refresh*). Share adapters on the Hugging Face Hub
with `--push-to-hub ORG/NAME` and list them in `MEDPEFT_HUB_ADAPTERS` to load them here.

## API

Every action is callable with `gradio_client`: `/classify`, `/compare`, `/generate`,
`/leaderboard`, `/adapters`, `/rescan_adapters`, `/filter_adapters`.

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


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, **kwargs):
    """Launch with the app's theme and safe defaults (errors shown as plain messages)."""
    return demo.launch(server_name=host, server_port=port, share=share, show_error=True, theme=theme(), css=CSS,
                       allowed_paths=list(getattr(demo, "medpeft_allowed_paths", [])), max_file_size="200mb",
                       footer_links=["api"], **kwargs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="MedPEFT Gradio app")
    p.add_argument("--adapters-dir", default=os.environ.get("MEDPEFT_ADAPTERS_DIR", "runs"),
                   help="folder scanned for adapters (medpeft.json) and results (results.json)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", help="create a public gradio.live link")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    demo = build_app(args.adapters_dir)
    launch(demo, args.host, args.port, args.share)


if __name__ == "__main__":
    main()
