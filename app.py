"""MedPEFT Gradio app: classify medical images with PEFT adapters, generate chest X-rays from
report text, and compare PEFT methods against Dutt et al. 2024.

    python app.py [--adapters-dir runs] [--host 127.0.0.1] [--port 7860] [--share]

Environment: MEDPEFT_ADAPTERS_DIR (default ``runs``), MEDPEFT_HUB_ADAPTERS (comma-separated Hub repo
ids of adapters), MEDPEFT_SD_BASE (Stable Diffusion pipeline: Hub id or local folder),
MEDPEFT_RESULTS_DIRS (extra folders of results.json, os.pathsep-separated), HF_TOKEN,
MEDPEFT_DATA_ROOTS (os.pathsep-separated folders the Train tab may read registered datasets from;
unset: any folder; set it on a public server).

The handlers are thin: models live in ``trainer/infer.py``, results in ``trainer/results.py``.
Research use only: not a medical device.
"""
from __future__ import annotations

import argparse
import copy
import functools
import html
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from adapters.io import PAPER_CITATION  # noqa: E402
from trainer.study import results as R  # noqa: E402
from trainer.infer import (AdapterList, Generator, InferenceError, Predictor, create_demo_adapter,  # noqa: E402
                           example_reports, find_adapters)
from trainer.jobs.webtrain import TrainingJob  # noqa: E402

log = logging.getLogger("medpeft.app")

FILE_TYPES = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"]
ALL = "All"
NO_ADAPTER = "(none: base pipeline only)"
DISCLAIMER = "Research use only: not a medical device, not for diagnosis."

CSS = """
.medpeft-header h1 {margin-bottom: 0.1em;}
.medpeft-header p {margin-top: 0; color: var(--body-text-color-subdued);}
.medpeft-note {font-size: 0.9em; color: var(--body-text-color-subdued);}
.medpeft-train-status {padding: 0.7em 0.9em; border-radius: var(--radius-lg);
  border: 1px solid var(--border-color-primary); background: var(--block-background-fill);}
.medpeft-train-status .medpeft-phase {font-weight: 600; margin-bottom: 0.15em;}
.medpeft-train-status .medpeft-detail {font-size: 0.9em; color: var(--body-text-color-subdued);}
.medpeft-train-status progress {-webkit-appearance: none; appearance: none; width: 100%; height: 10px;
  margin: 0.45em 0 0.25em; border: none; border-radius: 5px; overflow: hidden; background: var(--neutral-200, #e5e7eb);}
.medpeft-train-status progress::-webkit-progress-bar {background: var(--neutral-200, #e5e7eb); border-radius: 5px;}
.medpeft-train-status progress::-webkit-progress-value {background: var(--primary-500, #14b8a6); border-radius: 5px;
  transition: width 0.3s;}
.medpeft-train-status progress::-moz-progress-bar {background: var(--primary-500, #14b8a6); border-radius: 5px;}
.medpeft-train-status.medpeft-error {border-color: var(--error-border-color, #ef4444);}
.medpeft-train-status.medpeft-error .medpeft-phase {color: var(--error-text-color, #b91c1c);}
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
        def plain(e: Exception) -> gr.Error:
            from adapters import BackboneError, MethodError
            from trainer.config import ConfigError
            from trainer.data import DataError
            from trainer.hub import HubError
            from trainer.jobs.webtrain import UploadError

            if isinstance(e, (DataError, InferenceError, MethodError, BackboneError, UploadError, ConfigError,
                              HubError)):
                return gr.Error(str(e), title=f"Could not {action}", print_exception=False)
            # a bug: keep serving, tell the user plainly, log for the developer
            log.error("unexpected error while trying to %s", action, exc_info=e)
            return gr.Error(f"unexpected {type(e).__name__} while trying to {action}: {e}",
                            title=f"Could not {action}", print_exception=False)

        if inspect.isgeneratorfunction(fn):  # streaming handlers: errors raised while iterating too
            @functools.wraps(fn)
            def gen_inner(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except gr.Error:
                    raise
                except Exception as e:
                    raise plain(e) from None

            return gen_inner

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:
                raise plain(e) from None

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


# ------------------------------------------------------------------------------------ training (Train tab)
UPLOAD = "upload"  # the Train tab's dataset source: the uploaded zip (else a registered dataset name)
HPO_TRIAL_EPOCHS = 2  # quick HPO: epochs per trial
_VIT_PREFIXES = ("vit_", "deit")


def backbone_family(name: str) -> str:
    """``vit`` for timm VisionTransformer names (vit_*, deit*), else ``cnn``."""
    from adapters.backbones import TINY_VIT

    base = (name or "").strip().split("/")[-1].split(":")[-1].split(".")[0]
    return "vit" if base.startswith(_VIT_PREFIXES) or base == TINY_VIT else "cnn"


def recommended_method(family: str) -> str:
    """Dutt et al. 2024: SSF for CNNs, LoRA for ViTs."""
    return "lora" if family == "vit" else "ssf"


def method_names(family: str) -> list[str]:
    from adapters import methods_for

    names = [m.name for m in methods_for(family)]
    best = recommended_method(family)
    return [best] + sorted(n for n in names if n != best)


def train_backbones() -> list[tuple[str, str]]:
    from adapters import OFFLINE_LITE0
    from trainer.config import DEFAULT_CNN, DEFAULT_VIT

    return [("EfficientNet-Lite0 · ImageNet · offline weights", OFFLINE_LITE0),
            ("ViT-B/16, ImageNet-21k (Hub weights)", DEFAULT_VIT),
            ("ViT-S/16, ImageNet-21k (Hub weights)", "vit_small_patch16_224.augreg_in21k_ft_in1k"),
            ("DeiT-S (Hub weights)", "deit_small_patch16_224.fb_in1k"),
            ("ResNet-50 (Hub weights)", DEFAULT_CNN)]


def registered_datasets() -> list[tuple[str, str]]:
    from trainer.data import DATASETS

    return [("uploaded zip (above)", UPLOAD)] + [
        ("image folder on the server (imagefolder)" if n == "imagefolder" else n, n)
        for n in sorted(DATASETS) if n != "csv"]  # csv needs column options: use the command line


def safe_run_name(text: str | None) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", (text or "").strip()).strip("-.")
    return name[:60]


def _pct(x: Any) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if x != x else f"{100 * x:.1f}%"


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def train_status_html(phase: str, detail: str = "", fraction: float | None = None, error: bool = False) -> str:
    """The Train tab's status: a phase line, a detail line and a progress bar."""
    bar = "" if fraction is None else (f'<progress max="1000" value="{int(1000 * min(1.0, max(0.0, fraction)))}">'
                                      f"{100 * fraction:.0f}%</progress>")
    return (f'<div class="medpeft-train-status{" medpeft-error" if error else ""}">'
            f'<div class="medpeft-phase">{html.escape(phase)}</div>{bar}'
            f'<div class="medpeft-detail">{html.escape(detail)}</div></div>')


def training_curve_figure(series: dict[str, list[dict]], metric: str = "f1_macro", epochs: int | None = None):
    """Validation headline metric (%) and training loss per epoch; one line per run (HPO trials, final)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100, layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0, 0.99, 0.86))  # the top stays free for gradio's label badge
    ax_val, ax_loss = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    label = {"f1_macro": "macro-F1", "auroc": "AUROC"}.get(metric, metric)
    for i, (name, points) in enumerate(series.items()):
        if not points:
            continue
        x = [p["epoch"] for p in points]
        style = dict(marker="o", markersize=4, color=f"C{i % 10}", label=name,
                     linewidth=2.2 if name in ("training", "final run") else 1.3)
        ax_val.plot(x, [100 * p["val"] for p in points], **style)
        ax_loss.plot(x, [p["loss"] for p in points], **style)
    ax_val.set(title=f"Validation {label}", xlabel="epoch", ylabel=f"{label} (%)", ylim=(-2, 102))
    ax_loss.set(title="Training loss", xlabel="epoch", ylabel="loss")
    last = max([epochs or 1] + [p["epoch"] for points in series.values() for p in points])
    for ax in (ax_val, ax_loss):
        ax.grid(alpha=0.3)
        ax.set_xlim(0.7, max(2, last) + 0.3)  # the planned epochs: the curve fills in as it trains
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(series) > 1:
        ax_val.legend(fontsize=8, loc="best")
    return fig


def confusion_figure(matrix: list[list[int]], class_names: list[str]):
    """Test confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    import numpy as np
    from matplotlib.figure import Figure

    cm = np.asarray(matrix, dtype=float)
    k = len(class_names)
    side = min(9.0, max(3.6, 0.5 * k + 2.2))
    fig = Figure(figsize=(max(8.0, side + 1.6), side + 0.5), dpi=100, layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0, 1, 0.9))  # the top stays free for gradio's label badge
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, cmap="Blues", vmin=0)
    from matplotlib.ticker import MaxNLocator

    fig.colorbar(im, ax=ax, shrink=0.8, label="images", ticks=MaxNLocator(integer=True))
    ax.set_xticks(range(k), class_names, rotation=45 if k > 3 or max(map(len, class_names)) > 8 else 0,
                  ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), class_names)
    ax.set(xlabel="predicted class", ylabel="true class")
    if k <= 20:
        high = cm.max() / 2 if cm.size and cm.max() > 0 else 0.5
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=10 if k <= 10 else 7,
                        color="white" if cm[i, j] > high else "black")
    return fig


def train_result_markdown(results: dict, seed_result: dict, key: str | None, adapter_folder: Path,
                          adapters_dir: Path) -> str:
    """Test metrics of a finished Train-tab run, where its adapter went, and what was trained."""
    from trainer.study.results import format_params

    test = seed_result["test"]
    lines = ["### Test results", "Held-out test split, best-validation checkpoint "
             f"(epoch {seed_result.get('best_epoch')} of {seed_result.get('epochs_run')} run).", ""]
    cols = [(k, label) for k, label in (("f1_macro", "macro-F1"), ("accuracy", "accuracy"),
                                         ("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC"))
            if k in test]
    lines += ["| " + " | ".join(label for _, label in cols) + " |", "|" + "---:|" * len(cols),
              "| " + " | ".join(f"**{_pct(test[k])}**" if k == "f1_macro" else _pct(test[k]) for k, _ in cols) + " |"]
    per_class = test.get("per_class_f1") or test.get("per_class_auroc")
    if per_class:
        what = "F1" if "per_class_f1" in test else "AUROC"
        lines += ["", f"Per-class {what}: " + ", ".join(f"{c} {_pct(v)}" for c, v in per_class.items())]
    sizes = results.get("split_sizes") or {}
    tp, total = results.get("trainable_params"), results.get("total_params")
    lines += ["", f"**{results['method']}** on `{results['backbone']}`"
              + (f": {format_params(tp)} of {format_params(total)} parameters trained ({100 * tp / total:.2f}%)"
                 if tp and total else "")
              + (f" · {sizes.get('train')}/{sizes.get('val')}/{sizes.get('test')} train/val/test images"
                 if sizes else "")
              + f" · {float(results.get('wall_time_s') or 0):.0f} s"]
    hpo = results.get("quick_hpo")
    if hpo:
        b = hpo["best"]
        lines += [f"Quick HPO: {len(hpo['trials'])} trial(s) of {hpo['trial_epochs']} epoch(s); best lr "
                  f"{b['lr']:.2g}, weight decay {b['weight_decay']:.2g} (val {_pct(b['val'])})."]
    try:
        where = adapter_folder.relative_to(adapters_dir.resolve())
        where = f"{adapters_dir}/{where.as_posix()}"
    except ValueError:
        where = str(adapter_folder)
    lines += ["", f"Adapter saved to `{where}`" + (f" and selected on the **Classify** tab (`{key}`)." if key
                                                   else ".")]
    if results.get("stopped_early_by_user"):
        lines += ["", "**Stopped by you:** the best validation checkpoint so far was tested and saved."]
    return "\n".join(lines)


class QuickHPOJob(TrainingJob):
    """Quick HPO: a few short optuna trials (``trainer.study.hpo``'s objective, TPE sampler, ASHA pruning,
    ``HPO_TRIAL_EPOCHS`` epochs each, in a scratch folder), then the final training with the best
    configuration. Events are the plain job's plus ``trial``/``trial_done``/``final``. ``stop()``
    during the trials ends the current trial (its best checkpoint is tested) and keeps the best
    completed trial as the run."""

    def __init__(self, cfg, trials: int, scratch: str | os.PathLike, trial_epochs: int = HPO_TRIAL_EPOCHS):
        super().__init__(cfg)
        self.trials = int(trials)
        self.trial_epochs = int(trial_epochs)
        self.scratch = Path(scratch)

    def _run(self) -> None:
        import optuna

        from trainer.study import hpo
        from trainer.loops.classify import run
        from trainer.data import DataError

        put = self._events.put
        try:
            base = copy.deepcopy(self.cfg)
            base.epochs = max(1, min(self.cfg.epochs, self.trial_epochs))
            done: list[dict] = []
            counter = {"n": 0}

            def train(cfg, report):
                counter["n"] += 1
                n = counter["n"]
                if self.stopped:  # stopped between trials: no new trial (the study stops after this one)
                    raise optuna.TrialPruned("stopped by the user")
                put({"kind": "trial", "trial": n, "trials": self.trials, "epochs": cfg.epochs, "lr": cfg.lr,
                     "weight_decay": cfg.weight_decay, "hparams": dict(cfg.hparams)})
                try:
                    results = run(cfg, report=report, progress=lambda e: put({**e, "trial": n}), stop=self._stop)
                except optuna.TrialPruned:
                    put({"kind": "trial_done", "trial": n, "pruned": True})
                    raise
                val = results["metrics"]["val"][results["headline"]]["mean"]
                done.append({"trial": n, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "hparams": dict(cfg.hparams),
                             "val": val, "output_dir": cfg.output_dir})
                put({"kind": "trial_done", "trial": n, "pruned": False, "val": val})
                return results

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = hpo.make_study(f"quick-{self.cfg.method}", None, seed=0)
            study.optimize(hpo.objective_for(base, self.scratch, train), n_trials=self.trials, catch=(),
                           callbacks=[lambda st, _t: st.stop() if self.stopped else None])
            if not done:
                raise DataError("quick HPO: no trial completed (all were pruned or stopped)")
            best = max(done, key=lambda t: t["val"])
            summary = {"trials": [{k: v for k, v in t.items() if k != "output_dir"} for t in done],
                       "best": {k: v for k, v in best.items() if k != "output_dir"}, "trial_epochs": base.epochs}
            out = Path(self.cfg.output_dir)
            if self.stopped:  # keep the best trial so far as the run
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(best["output_dir"], out)
                results = json.loads((out / "results.json").read_text())
                results["stopped_early_by_user"] = True
            else:
                final = hpo.best_config(self.cfg, study)
                final.lr, final.weight_decay = best["lr"], best["weight_decay"]
                final.hparams = {**final.hparams, **best["hparams"]}
                put({"kind": "final", "lr": final.lr, "weight_decay": final.weight_decay,
                     "hparams": dict(final.hparams)})
                results = run(final, progress=lambda e: put({**e, "final": True}), stop=self._stop)
            results["quick_hpo"] = summary
            (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
            self.results = results
            put({"kind": "done", "results": results})
        except Exception as e:  # shown to the user as a message; the server keeps serving
            self.error = str(e) if isinstance(e, (DataError, ValueError)) else f"{type(e).__name__}: {e}"
            put({"kind": "error", "message": self.error})


class TrainRun:
    """One session's running job; a Stop before the first training step waits for that step (a
    checkpoint must exist to be kept)."""

    def __init__(self, session: str, job: TrainingJob):
        self.session, self.job = session, job
        self.stop_requested = False
        self.stepped = False
        self._lock = threading.Lock()

    def request_stop(self) -> None:
        with self._lock:
            self.stop_requested = True
            if self.stepped:
                self.job.stop()

    def on_step(self) -> None:
        with self._lock:
            self.stepped = True
            if self.stop_requested and not self.job.stopped:
                self.job.stop()

    def new_run(self) -> None:
        """An HPO trial or the final run starts: a Stop waits for its first step again."""
        with self._lock:
            self.stepped = False


# ------------------------------------------------------------------------------------ the app
def build_app(adapters_dir: str | os.PathLike | None = None, *, hub_repos: list[str] | None = None,
              predictor: Predictor | None = None, generator: Generator | None = None, create_demo: bool = True,
              sd_base: str | None = None, results_dirs: list[str] | None = None,
              examples_dir: str | os.PathLike | None = None, hub_endpoint: str | None = None,
              train_dir: str | os.PathLike | None = None) -> gr.Blocks:
    """The Gradio app. ``adapters_dir`` default: MEDPEFT_ADAPTERS_DIR or ``runs``. With
    ``create_demo`` and no adapter anywhere, a demo adapter (ImageNet classes) is written there.
    ``train_dir``: the Train tab's scratch folder (per-session upload extraction; default a new temp folder)."""
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

    # -------------------------------------------------------------- Train tab handlers
    from trainer.jobs.webtrain import default_choice

    default_backbone, default_method = default_choice()
    has_gpu = default_method == "lora"
    train_root = Path(train_dir) if train_dir else Path(tempfile.mkdtemp(prefix="medpeft-app-train-"))
    train_root.mkdir(parents=True, exist_ok=True)
    train_lock = threading.Lock()
    train_runs: dict[str, TrainRun] = {}  # session -> its running job
    active: list[TrainRun] = []  # at most one (concurrency_limit=1); read by the "you are queued" note
    queued: dict[str, str] = {}  # session -> "queued" | "cancel" (a Stop pressed while waiting in the queue)

    def session_of(request: gr.Request | None) -> str:
        return safe_run_name(getattr(request, "session_hash", None) or "") or "anonymous"

    def work_dir(session: str) -> Path:
        """A fresh per-session scratch folder (zip extraction, image cache, HPO trials)."""
        folder = train_root / session / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        return folder

    def remove_work(folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.parent.rmdir()  # the session folder, once empty
        except OSError:
            pass

    def resolve_dataset(zip_file: str | None, dataset: str | None, data_dir: str | None, work: Path):
        """(dataset name, data dir, DatasetCheck) for the upload or a registered dataset on disk."""
        from trainer.data import DATASETS, DataError, load_dataset
        from trainer.jobs.webtrain import MIN_PER_CLASS, DatasetCheck, check_dataset, dataset_root, safe_extract_zip

        dataset = (dataset or UPLOAD).strip()
        if dataset == UPLOAD:
            if not zip_file:
                raise DataError("upload a zip of your images first (one folder per class), or choose a "
                                "registered dataset and its folder")
            if not str(zip_file).lower().endswith(".zip"):
                raise DataError(f"{Path(zip_file).name} is not a .zip file")
            root = dataset_root(safe_extract_zip(zip_file, work / "upload"))
            return "imagefolder", root, check_dataset(root)
        if dataset not in DATASETS:
            raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(sorted(DATASETS))}")
        folder = Path((data_dir or "").strip()).expanduser()
        if not str(data_dir or "").strip():
            raise DataError(f"enter the folder that holds {dataset} on the server (Data dir)")
        roots = [Path(r).expanduser().resolve() for r in os.environ.get("MEDPEFT_DATA_ROOTS", "").split(os.pathsep)
                 if r.strip()]
        if roots and not any(folder.resolve() == r or r in folder.resolve().parents for r in roots):
            raise DataError(f"{folder} is outside the folders this server trains from (MEDPEFT_DATA_ROOTS)")
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder on the server")
        if dataset == "imagefolder":
            return dataset, folder, check_dataset(folder)
        index = load_dataset(dataset, folder)
        counts = index.class_counts()
        check = DatasetCheck(folder, counts, notes=list(index.notes))
        few = {c: n for c, n in counts.items() if n < MIN_PER_CLASS}
        if few:
            check.problems.append("too few images to train, validate and test on: " + ", ".join(
                f"{c} has {n}" for c, n in few.items()) + f" (at least {MIN_PER_CLASS} per class)")
        return dataset, folder, check

    @user_errors("check the dataset")
    def check_dataset_view(zip_file: str | None, dataset: str | None, data_dir: str | None,
                           request: gr.Request = None) -> str:
        """Check a dataset (the uploaded zip, safely extracted, or a registered dataset on disk) without training."""
        work = work_dir(session_of(request))
        try:
            _, _, check = resolve_dataset(zip_file, dataset, data_dir, work)
        finally:
            remove_work(work)
        head = "**Ready to train.**" if check.ok else "**Cannot train on this dataset yet.**"
        return head + "\n\n" + "\n".join(f"- {line}" for line in check.summary().splitlines())

    def methods_update(backbone: str | None):
        family = backbone_family(backbone or default_backbone)
        return gr.update(choices=method_names(family), value=recommended_method(family))

    def queue_note(request: gr.Request = None) -> Any:
        with train_lock:
            busy = bool(active)
            if busy:
                queued[session_of(request)] = "queued"
        if not busy:
            return ""
        return ("**Another training is running; you are queued.** One training runs at a time on this server: "
                "yours starts when it finishes (your place in the queue is shown on the progress panel).")

    def stop_training(request: gr.Request = None) -> str:
        """Stop this session's training after the current step (the best validation checkpoint so far is
        tested and saved), or cancel its training waiting in the queue."""
        session = session_of(request)
        with train_lock:
            run = train_runs.get(session)
            if run is None and queued.get(session) == "queued":
                queued[session] = "cancel"
                return "Your queued training is cancelled: it will not start."
        if run is None:
            return "No training is running in this session."
        run.request_stop()
        return ("**Stopping:** the current step finishes, then the best validation checkpoint so far is tested "
                "and saved.")

    def int_in(name: str, value: Any, lo: int, hi: int) -> int:
        from trainer.data import DataError

        try:
            v = int(value)
        except (TypeError, ValueError):
            raise DataError(f"{name} must be a whole number") from None
        if v != float(value) or not lo <= v <= hi:
            raise DataError(f"{name} must be a whole number from {lo} to {hi}, not {value}")
        return v

    @user_errors("train")
    def train(zip_file: str | None, dataset: str | None, data_dir: str | None, backbone: str | None,
              method: str | None, quick_hpo: bool, trials: float, epochs: float, batch_size: float, lr: float,
              img_size: float, run_name: str | None, request: gr.Request = None):
        """Fine-tune a backbone with a PEFT method on the uploaded zip (or a registered dataset), streaming
        progress; at the end the adapter is saved under <adapters dir>/trained and selectable for classification."""
        from trainer.config import TrainConfig
        from trainer.data import DataError

        skip = gr.skip()
        session = session_of(request)
        with train_lock:
            cancelled = queued.pop(session, None) == "cancel"
        if cancelled:
            yield (train_status_html("Cancelled", "stopped while waiting in the queue: nothing was trained"),
                   *[skip] * 11, "")
            return
        dataset = (dataset or UPLOAD).strip()
        work: Path | None = None
        run: TrainRun | None = None
        job: TrainingJob | None = None
        finished = failed = False
        run_dir: Path | None = None
        try:
            epochs = int_in("epochs", epochs, 1, 1000)
            batch_size = int_in("batch size", batch_size, 1, 1024)
            img_size = int_in("image size", img_size, 16, 1024)
            trials = int_in("HPO trials", trials, 2, 20) if quick_hpo else 0
            try:
                lr = float(lr)
            except (TypeError, ValueError):
                raise DataError("the learning rate must be a number such as 0.005") from None
            if not 0 < lr < 1:
                raise DataError(f"the learning rate must be between 0 and 1, not {lr}")
            backbone = (backbone or "").strip() or default_backbone
            family = backbone_family(backbone)
            method = (method or "").strip() or recommended_method(family)
            if method not in method_names(family):
                raise DataError(f"{method!r} is not a PEFT method for {family.upper()} backbones like {backbone}; "
                                f"choose one of {', '.join(method_names(family))}")
            if "/" not in backbone and ":" not in backbone:
                import timm

                if not timm.is_model(backbone):
                    raise DataError(f"unknown backbone {backbone!r}: use a timm model name (timm.list_models())")
            work = work_dir(session)
            yield (train_status_html("Checking the dataset", "unpacking the upload safely and counting images per "
                                     "class" if dataset == UPLOAD else f"reading {dataset} from {data_dir}"),
                   None, "", None, None, *[skip] * 7, "")
            ds_name, root, check = resolve_dataset(zip_file, dataset, data_dir, work)
            if not check.ok:
                raise DataError("cannot train on this dataset:\n" + check.summary())
            if check.notes:
                gr.Warning("\n".join(check.notes), title="Dataset notes")
            stem = Path(zip_file).stem if ds_name == "imagefolder" and zip_file and dataset == UPLOAD else ds_name
            name = safe_run_name(run_name) or safe_run_name(stem) or "run"
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = state.adapters_dir / "trained" / f"{name}-{stamp}"
            k = 2
            while run_dir.exists():
                run_dir = state.adapters_dir / "trained" / f"{name}-{stamp}-{k}"
                k += 1
            cfg = TrainConfig(method=method, dataset=ds_name, data_dir=str(root), backbone=backbone, pretrained=True,
                              img_size=img_size, epochs=epochs, batch_size=batch_size, lr=lr, seeds=[0],
                              num_workers=min(4, os.cpu_count() or 1) if has_gpu else 0,
                              mixed_precision="bf16" if has_gpu else "no", output_dir=str(run_dir),
                              cache_dir=str(work / ".image-cache" if dataset == UPLOAD
                                            else train_root / ".image-cache")).validate()
            job = QuickHPOJob(cfg, trials, work / "hpo") if trials else TrainingJob(cfg)
            run = TrainRun(session, job)
            with train_lock:
                train_runs[session] = run
                active.append(run)
            job.start()
            t0 = time.monotonic()
            units = trials * min(epochs, HPO_TRIAL_EPOCHS) + epochs  # epochs of work, for the progress bar
            series: dict[str, list[dict]] = {}
            where = {"label": "training", "offset": 0, "epochs": epochs, "epoch": 0, "step": 0, "steps": 0,
                     "loss": None, "best": None, "phase": "Training"}
            if trials:
                where.update(label="trial 1", phase=f"Quick HPO: trial 1 of {trials}")
            metric = "f1_macro"

            def status(prefix: str = "") -> str:
                frac = (where["offset"] + where["epoch"] - 1 + where["step"] / max(1, where["steps"])) / units \
                    if where["steps"] else where["offset"] / units
                parts = []
                if where["steps"]:
                    parts.append(f"epoch {where['epoch']}/{where['epochs']}, step {where['step']}/{where['steps']}")
                else:
                    parts.append("preparing: decoding images and loading the backbone")
                if where["loss"] is not None:
                    parts.append(f"loss {where['loss']:.3f}")
                if where["best"] is not None:
                    parts.append(f"best val {where['best']}")
                parts.append(f"{_elapsed(time.monotonic() - t0)} elapsed")
                phase = where["phase"]
                if run.stop_requested:
                    phase += " · stopping after the current step (the best checkpoint so far is kept)"
                return train_status_html(prefix + phase, " · ".join(parts), frac)

            yield (status(), None, "", None, None, *[skip] * 7, "")
            last = time.monotonic()
            results = None
            for ev in job.events():
                kind = ev["kind"]
                if kind == "step":
                    run.on_step()
                    where.update(epoch=ev["epoch"], step=ev["step"], steps=ev["steps"], loss=ev["loss"])
                elif kind == "trial":
                    run.new_run()
                    n = ev["trial"]
                    where.update(label=f"trial {n}", offset=(n - 1) * min(epochs, HPO_TRIAL_EPOCHS),
                                 epochs=ev["epochs"], epoch=0, step=0, steps=0, loss=None,
                                 phase=f"Quick HPO: trial {n} of {trials} (lr {ev['lr']:.2g})")
                elif kind == "final":
                    run.new_run()
                    where.update(label="final run", offset=trials * min(epochs, HPO_TRIAL_EPOCHS), epochs=epochs,
                                 epoch=0, step=0, steps=0, loss=None,
                                 phase=f"Final training with the best HPO configuration (lr {ev['lr']:.2g})")
                elif kind == "epoch":
                    val = ev["val"]
                    metric = val.get("headline", "f1_macro")
                    score = float(val.get(metric, float("nan")))
                    series.setdefault(where["label"], []).append(
                        {"epoch": ev["epoch"], "val": score, "loss": ev["train_loss"]})
                    best = max(series[where["label"]], key=lambda p: p["val"])
                    where.update(best=f"{'F1' if metric == 'f1_macro' else metric} {_pct(best['val'])} "
                                      f"(epoch {best['epoch']})", epoch=ev["epoch"], step=where["steps"])
                    yield (status(), training_curve_figure(series, metric, where["epochs"]), *[skip] * 11)
                    last = time.monotonic()
                    continue
                elif kind == "done":
                    results = ev["results"]
                    break
                elif kind == "error":
                    failed = True
                    yield (train_status_html("Training failed", ev["message"], None, error=True), *[skip] * 12)
                    raise DataError(f"training failed: {ev['message']}")
                if time.monotonic() - last >= 0.5:
                    yield (status(), *[skip] * 12)
                    last = time.monotonic()
            finished = True
            if results is None:
                raise DataError("training ended without results")
            # ---- the result: metrics, confusion matrix, the adapter in the store and on the Classify tab
            adapter_folder = (run_dir / results["adapter_dir"]).resolve()
            adapters = state.scan()
            key = next((a.key for a in adapters if Path(a.folder).resolve() == adapter_folder), None)
            best_seed = next((r for r in results["per_seed"] if f"seed_{r['seed']}/" in results["adapter_dir"]),
                             results["per_seed"][0])
            test = best_seed["test"]
            names = results.get("class_names") or []
            cm = confusion_figure(test["confusion_matrix"], names) if "confusion_matrix" in test else None
            stopped = bool(results.get("stopped_early_by_user"))
            summary = {
                "adapter_key": key, "run_dir": str(run_dir), "adapter_dir": str(adapter_folder),
                "method": results["method"], "backbone": results["backbone"], "dataset": results["dataset"],
                "class_names": names, "split_sizes": results.get("split_sizes"),
                "test": {k: v for k, v in test.items() if isinstance(v, (int, float))},
                "per_class_f1": test.get("per_class_f1"), "confusion_matrix": test.get("confusion_matrix"),
                "best_epoch": best_seed.get("best_epoch"), "epochs_run": best_seed.get("epochs_run"),
                "trainable_params": results.get("trainable_params"), "total_params": results.get("total_params"),
                "wall_time_s": round(float(results.get("wall_time_s") or 0), 1), "stopped_early_by_user": stopped,
                "quick_hpo": results.get("quick_hpo"),
            }
            md = train_result_markdown(results, best_seed, key, adapter_folder, state.adapters_dir)
            done_phase = "Stopped: best checkpoint so far tested and saved" if stopped else "Training finished"
            detail = (f"test {'macro-F1' if metric == 'f1_macro' else metric} {_pct(test.get(metric))} · "
                      f"{_elapsed(time.monotonic() - t0)} · adapter selected on the Classify tab")
            cls = rescan(ALL, ALL, key, scan=False)
            push_choices = [(a.label(), a.key) for a in state.classifiers() if a.source == "local"]
            curve = training_curve_figure(series, metric, where["epochs"]) if series else skip
            yield (train_status_html(done_phase, detail, 1.0), curve, md, cm, summary,
                   gr.update(choices=push_choices, value=key), cls[0], gr.update(value=ALL), *cls[1:], skip)
        except Exception as e:  # shown on the status panel too; user_errors makes it a plain message
            if not failed:
                yield (train_status_html("Could not start training" if job is None else "Training failed",
                                         str(e).replace(":\n", ": ").replace("\n", " · "), error=True), *[skip] * 12)
            raise
        finally:
            with train_lock:
                if run is not None:
                    if train_runs.get(session) is run:
                        del train_runs[session]
                    if run in active:
                        active.remove(run)
            if job is not None and not finished and not failed:  # the client went away: stop, then clean up
                job.stop()

                def drain(job=job, work=work, run_dir=run_dir):
                    for ev in job.events():
                        if ev["kind"] == "error":
                            shutil.rmtree(run_dir, ignore_errors=True)  # an incomplete run: no adapter in it
                    remove_work(work)

                threading.Thread(target=drain, name="medpeft-train-cleanup", daemon=True).start()
            else:
                if failed and run_dir is not None:
                    shutil.rmtree(run_dir, ignore_errors=True)  # an incomplete run: no adapter in it
                if work is not None:
                    remove_work(work)

    def push(adapter_key: str | None, repo_id: str | None, token: str | None, private: bool = True) -> str:
        """Push a local adapter to the Hugging Face Hub. The token is used for this call only: never logged
        or stored."""
        from trainer.hub import push_adapter

        def fail(msg: str):
            if token:
                msg = msg.replace(token, "***")
            return gr.Error(msg, title="Could not push the adapter", print_exception=False)

        repo_id = (repo_id or "").strip()
        if not repo_id:
            raise fail("enter a Hub repo id such as your-name/medpeft-ssf-mydata")
        if not (token or "").strip():
            raise fail("paste a Hugging Face token with write access (https://huggingface.co/settings/tokens); "
                       "it is used for this push only and not stored")
        try:
            adapter = state.get(adapter_key)
            if adapter.source != "local":
                raise InferenceError(f"{adapter.name} is already on the Hub; choose a local adapter")
            results = None
            run_folder = Path(adapter.folder).parent.parent
            if (run_folder / "results.json").is_file():
                results = json.loads((run_folder / "results.json").read_text())
                if (run_folder / str(results.get("adapter_dir", ""))).resolve() != Path(adapter.folder).resolve():
                    results = None
            url = push_adapter(adapter.folder, repo_id, private=bool(private), results=results,
                               token=token.strip(), endpoint=state.hub_endpoint)
        except gr.Error:
            raise
        except Exception as e:  # HubError, InferenceError or a bug: a plain message without the token
            raise fail(str(e) or type(e).__name__) from None
        return f"Pushed **{adapter.name}** to [{url}]({url}) ({'private' if private else 'public'} repo)."

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

            # ---------------------------------------------------------- Train
            with gr.Tab("Train", id="train"):
                gr.Markdown("Fine-tune a pretrained backbone on your own images with a PEFT method: upload a zip with "
                            "one folder per class (PNG, JPEG or DICOM), or use a registered dataset on the server. "
                            "The adapter is saved to the local store and selected on the Classify tab. The paper's "
                            "picks: **SSF** for CNNs, **LoRA** for ViTs. One training runs at a time per server.",
                            elem_classes="medpeft-note")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5, min_width=360):
                        zip_in = gr.File(label="Dataset zip: one folder per class (PNG, JPEG or DICOM)",
                                         file_types=[".zip"], type="filepath", height=120, elem_id="train-zip")
                        with gr.Row():
                            source_dd = gr.Dropdown(registered_datasets(), value=UPLOAD, label="Dataset", scale=1)
                            data_dir_in = gr.Textbox(label="Data dir (registered datasets)", scale=1,
                                                     placeholder="/data/HAM10000 on the server")
                        check_btn = gr.Button("Check dataset", variant="secondary", size="sm")
                        check_md = gr.Markdown(elem_classes="medpeft-note", elem_id="train-check")
                        backbone_dd = gr.Dropdown(train_backbones(), value=default_backbone, allow_custom_value=True,
                                                  label="Backbone (or any timm model name)")
                        with gr.Row():
                            method_dd = gr.Dropdown(method_names(backbone_family(default_backbone)),
                                                    value=default_method, label="PEFT method", min_width=120,
                                                    allow_custom_value=True)  # checked against the backbone
                            lr_in = gr.Number(1e-3 if has_gpu else 5e-3, minimum=0, label="Learning rate",
                                              min_width=90)
                        with gr.Row():
                            epochs_in = gr.Number(10, precision=0, minimum=1, maximum=1000, label="Epochs",
                                                  min_width=90)
                            batch_in = gr.Number(32, precision=0, minimum=1, maximum=1024, label="Batch size",
                                                 min_width=90)
                            img_in = gr.Number(224 if has_gpu else 128, precision=0, minimum=16, maximum=1024,
                                               label="Image size (px)", min_width=90)
                        with gr.Row(equal_height=True):
                            hpo_cb = gr.Checkbox(False, label="Quick HPO", scale=2,
                                                 info=f"a few short optuna trials ({HPO_TRIAL_EPOCHS} epochs each; lr, "
                                                      "weight decay, the method's own settings), then the final run "
                                                      "with the best")
                            trials_in = gr.Number(3, precision=0, minimum=2, maximum=20, label="HPO trials", scale=1,
                                                  min_width=90)
                        run_name_in = gr.Textbox(label="Run name (optional)", placeholder="default: the zip's name")
                        with gr.Row():
                            train_btn = gr.Button("Train", variant="primary", elem_id="train-button")
                            stop_btn = gr.Button("Stop, keep best", variant="stop", elem_id="stop-button")
                        train_note = gr.Markdown(elem_classes="medpeft-note", elem_id="train-note")
                    with gr.Column(scale=7, min_width=420):
                        train_status = gr.HTML(train_status_html("Ready", "choose a dataset and press Train"),
                                               elem_id="train-status")
                        curve_plot = gr.Plot(label="Validation F1 and training loss per epoch", elem_id="train-curve")
                        train_metrics = gr.Markdown(elem_id="train-metrics")
                        cm_plot = gr.Plot(label="Confusion matrix (test split)", elem_id="train-confusion")
                        with gr.Accordion("Push the adapter to the Hugging Face Hub", open=False):
                            push_key = gr.Dropdown([(a.label(), a.key) for a in state.classifiers()
                                                    if a.source == "local"], value=None, allow_custom_value=True,
                                                   label="Adapter")
                            with gr.Row():
                                repo_in = gr.Textbox(label="Repo id", placeholder="your-name/medpeft-ssf-mydata",
                                                     scale=2)
                                token_in = gr.Textbox(label="Hugging Face token (write access; used once, not stored)",
                                                      type="password", scale=2)
                            with gr.Row():
                                private_cb = gr.Checkbox(True, label="Private repo")
                                push_btn = gr.Button("Push to the Hub", variant="secondary")
                            push_md = gr.Markdown(elem_classes="medpeft-note")
                        with gr.Accordion("Run details (JSON)", open=False):
                            run_json = gr.JSON(label="Run summary")

            # ---------------------------------------------------------- Generate
            with gr.Tab("Generate", id="generate"):
                gr.Markdown("Generate a chest X-ray from report text with Stable Diffusion, optionally with a "
                            "PEFT adapter of its U-Net (Dutt et al., Table 4). Needs a diffusers pipeline: a Hub "
                            "id (online) or a local folder; set `MEDPEFT_SD_BASE` to pre-fill it.")
                if importlib.util.find_spec("trainer.loops.generate") is None:
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
        backbone_dd.change(methods_update, [backbone_dd], [method_dd], api_name="methods_for_backbone", queue=False)
        check_btn.click(check_dataset_view, [zip_in, source_dd, data_dir_in], [check_md], api_name="check_dataset",
                        concurrency_id="check_dataset", concurrency_limit=2)
        train_btn.click(queue_note, None, [train_note], queue=False, api_visibility="private")
        train_btn.click(train, [zip_in, source_dd, data_dir_in, backbone_dd, method_dd, hpo_cb, trials_in, epochs_in,
                                batch_in, lr_in, img_in, run_name_in],
                        [train_status, curve_plot, train_metrics, cm_plot, run_json, push_key, dataset_dd, task_dd,
                         adapter_dd, compare_box, gen_adapter, status_md, train_note],
                        api_name="train", concurrency_limit=1, concurrency_id="train", show_progress="full",
                        show_progress_on=[curve_plot])
        stop_btn.click(stop_training, None, [train_note], api_name="stop_training", queue=False)
        push_btn.click(push, [push_key, repo_in, token_in, private_cb], [push_md], api_name="push_adapter",
                       concurrency_id="push_adapter").then(lambda: "", None, [token_in], queue=False,
                                                           api_visibility="private")
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
