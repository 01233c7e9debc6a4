"""Classify images with adapters (and explain with Grad-CAM); the adapters come from :mod:`.store`.

    adapters = find_adapters("runs")                 # local adapter folders (+ Hub repos: find_adapters(root, [repo, ...]))
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
import os
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
from adapters.io import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, apply_method, load_adapter_weights, read_config, \
    scale_logits

from ..data.images import to_rgb
from ..data.transforms import build_transforms, pre_resize
from ..preflight import hub_reachable
from .store import AdapterInfo, InferenceError, class_names

log = logging.getLogger(__name__)


class Prediction(NamedTuple):
    probs: dict[str, float]      # class name -> probability (softmax; sigmoid for multi-label)
    seen: Image.Image            # the preprocessed image the model saw (de-normalised)
    latency_ms: float            # preprocessing + forward pass
    calibrated: bool = False     # probabilities from logits / T (the adapter's validation temperature)

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
        pretrained = self.pretrained and cfg.pretrained  # an adapter trained from random weights needs no Hub
        key = (cfg.backbone, cfg.img_size, pretrained, cfg.init_checkpoint, cfg.global_pool, cfg.fc_norm)
        with self._build_lock(("base",) + key):
            if key in self._bases:
                return self._bases[key]
            failed = self._failures.get(key)
            if failed and time.monotonic() - failed[0] < self.FAILURE_TTL_S:
                raise InferenceError(failed[1])
            from adapters import create_backbone

            problem = self._offline_problem(cfg.backbone) if pretrained and not cfg.init_checkpoint else None
            if problem:
                self._failures[key] = (time.monotonic(), problem)
                raise InferenceError(problem)
            t0 = time.monotonic()
            try:
                # Seeded: weights that are not loaded (random test backbones, a fresh head) are the
                # same in every process, so an answer does not depend on when the app started.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    base = create_backbone(cfg.backbone, cfg.num_classes, pretrained=pretrained,
                                           img_size=cfg.img_size, init_checkpoint=cfg.init_checkpoint,
                                           global_pool=cfg.global_pool, fc_norm=cfg.fc_norm)
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
        img = to_rgb(image)
        img = pre_resize(img, lm.config.data_config)  # the trainer's image-cache resize, as recorded
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
        logits = scale_logits(logits.float().cpu()[0], lm.config.temperature)  # calibrated where fitted
        probs = torch.sigmoid(logits) if lm.config.task == "multilabel" else torch.softmax(logits, dim=0)
        latency = (time.perf_counter() - t0) * 1000
        names = unique_labels(class_names(lm.config))
        return Prediction({n: float(p) for n, p in zip(names, probs.tolist())}, seen, latency,
                          calibrated=lm.config.temperature is not None)

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
