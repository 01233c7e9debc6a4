"""Classify images with adapters (and explain with Grad-CAM); the adapters come from :mod:`.store`.

    adapters = find_adapters("runs")                 # local adapter folders (+ Hub repos: find_adapters(root, [repo, ...]))
    predictor = Predictor()
    pred = predictor.predict(adapters[0], load_image("x.dcm"))   # (probs, seen image, latency_ms)
    heat = predictor.explain(adapters[0], image, class_idx=pred.top_index)
    rows = predictor.compare(adapters[:4], image)    # K adapters, one preprocessing pass, + memory used

Adapters are served by :mod:`.serving`: one frozen base per backbone (and init checkpoint, resolution,
pooling), each method applied once to it, each adapter's tensors swapped in (no copy of the base per
adapter). Requests on one base are serialised by that base's lock (switch + forward + Grad-CAM backward);
different bases run in parallel. Merged copies (the adapter folded into plain weights, checked to give the
same outputs) are made only under ``memory_mb`` (the app's ``MEDPEFT_SERVE_MEMORY_MB``; 0: never).
Preprocessing is the adapter's saved timm ``data_config``, applied exactly as the trainer evaluated its
test set; the calibration temperature and class names come from each adapter's own config.

Every user-facing failure is an :class:`InferenceError` (or the data layer's ``DataError``) with
a plain message.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from adapters import BackboneError, MethodError, family_of
from adapters.io import CONFIG_NAME, AdapterConfig, read_config, scale_logits

from ..data.images import to_rgb
from ..data.transforms import build_transforms, pre_resize
from ..preflight import hub_reachable
from .serving import AdapterServer, ServedAdapter
from .serving import stamp as weights_stamp
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
    """An adapter ready to run: its config, preprocessing and its place on the shared base."""

    served: ServedAdapter
    transform: Any
    family: str
    server: AdapterServer
    load_s: float = 0.0

    @property
    def config(self) -> AdapterConfig:
        return self.served.config

    @property
    def lock(self) -> threading.RLock:
        """The base's lock: hold it while using :attr:`model`."""
        return self.served.base.lock

    @property
    def merged(self) -> bool:
        return self.server.is_merged(self.served.key)

    @property
    def note(self) -> str:
        return self.server.merge_note(self.served.key)

    @property
    def model(self) -> nn.Module:
        """The module that computes this adapter's raw logits now (its merged copy, or its structure with
        its tensors switched in). Hold :attr:`lock` until done with it: another request may switch."""
        return self.server.module(self.served)


class CompareRow(NamedTuple):
    adapter: AdapterInfo
    prediction: Prediction | None
    error: str | None
    memory_bytes: int            # how much the process grew while this adapter was loaded and run


class Comparison(list):
    """:class:`CompareRow` per adapter, and the memory the whole compare used (``memory_bytes``)."""

    def __init__(self, rows=(), memory_bytes: int = 0, preprocess_passes: int = 0):
        super().__init__(rows)
        self.memory_bytes = memory_bytes
        self.preprocess_passes = preprocess_passes


def process_memory(device: torch.device) -> int:
    """Resident bytes of this process (Linux), plus CUDA memory allocated on ``device``."""
    rss = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    if device.type == "cuda":
        rss += torch.cuda.memory_allocated(device)
    return rss


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
    """Loads adapters on demand onto shared bases and runs them; thread-safe (one lock per base).

    pretrained: create base backbones with pretrained weights (False: random, tests only).
    memory_mb: memory for merged copies of mergeable adapters (0, the default: none; every adapter runs
    unmerged on its shared base). merge=False: never merge, whatever the budget.
    max_models: unused (adapters on a shared base cost their own tensors only); kept for old callers.
    """

    FAILURE_TTL_S = 120.0

    def __init__(self, pretrained: bool = True, device: str | None = None, max_models: int | None = None,
                 merge: bool = True, memory_mb: float = 0):
        self.pretrained = pretrained
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.merge = merge
        self.memory_mb = memory_mb
        self._lock = threading.Lock()
        self._models: dict[str, LoadedModel] = {}
        self._failures: dict[tuple, tuple[float, str]] = {}
        budget = int(memory_mb * 2 ** 20) if merge else 0
        self.server = AdapterServer(self._create_base, self._base_key, device=self.device,
                                    merged_budget_bytes=budget)

    # -- bases
    def _base_key(self, cfg: AdapterConfig) -> tuple:
        pretrained = self.pretrained and cfg.pretrained  # an adapter trained from random weights needs no Hub
        # Random (seeded) weights depend on the class count timm builds the head with (it draws first), so
        # adapters trained on random weights share a base only with adapters of the same class count.
        classes = None if pretrained and not cfg.init_checkpoint else cfg.num_classes
        return (cfg.backbone, cfg.img_size, pretrained, cfg.init_checkpoint, cfg.global_pool, cfg.fc_norm, classes)

    def _create_base(self, cfg: AdapterConfig) -> nn.Module:
        """The frozen base backbone for ``cfg`` (called once per base key by the server)."""
        key = self._base_key(cfg)
        pretrained = key[2]
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
            # Seeded: weights that are not loaded (a fresh head) are the same in every process.
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
        log.info("created base %s in %.1fs", cfg.backbone, time.monotonic() - t0)
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

    # -- loading
    def load(self, adapter: AdapterInfo | str | os.PathLike) -> LoadedModel:
        folder = adapter.folder if isinstance(adapter, AdapterInfo) else Path(adapter)
        key = str(folder.resolve())
        lm = self._models.get(key)
        if lm is not None and self.server.adapters.get(key) is lm.served and lm.served.stamp == weights_stamp(folder):
            return lm
        try:
            cfg = adapter.config if isinstance(adapter, AdapterInfo) else read_config(folder)
        except MethodError as e:
            raise InferenceError(str(e)) from e
        if cfg.task == "generation":
            raise InferenceError(f"{folder.name} is a text-to-image (generation) adapter: use the Generate tab")
        dcfg = cfg.data_config
        if not dcfg or "input_size" not in dcfg:
            raise InferenceError(f"{folder.name}/{CONFIG_NAME} has no data_config (preprocessing): "
                                 "re-save the adapter with the trainer")
        t0 = time.monotonic()
        served = self.server.load(folder, cfg, key=key)
        lm = LoadedModel(served=served, transform=build_transforms(dcfg, train=False),
                         family=family_of(served.structure.model), server=self.server)
        if self.merge and self.memory_mb > 0:
            probe = torch.randn(1, *[int(v) for v in dcfg["input_size"]], generator=torch.Generator().manual_seed(0))
            self.server.merge(served, probe.to(self.device))
        lm.load_s = time.monotonic() - t0
        with self._lock:
            self._models[key] = lm
        return lm

    def unload(self, adapter: AdapterInfo | str | os.PathLike) -> None:
        folder = adapter.folder if isinstance(adapter, AdapterInfo) else Path(adapter)
        key = str(folder.resolve())
        with self._lock:
            self._models.pop(key, None)
        self.server.unload(key)

    def memory(self) -> dict[str, int]:
        """Bytes held by the server: bases, structures, adapters' own tensors, merged copies."""
        return self.server.memory()

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

    def _run(self, lm: LoadedModel, x: torch.Tensor, seen: Image.Image, t0: float) -> Prediction:
        with lm.lock, torch.inference_mode():
            logits = lm.model(x)
        logits = scale_logits(logits.float().cpu()[0], lm.config.temperature)  # calibrated where fitted
        probs = torch.sigmoid(logits) if lm.config.task == "multilabel" else torch.softmax(logits, dim=0)
        latency = (time.perf_counter() - t0) * 1000
        names = unique_labels(class_names(lm.config))
        return Prediction({n: float(p) for n, p in zip(names, probs.tolist())}, seen, latency,
                          calibrated=lm.config.temperature is not None)

    def predict(self, adapter: AdapterInfo | str | os.PathLike, image: Image.Image) -> Prediction:
        lm = self.load(adapter)
        t0 = time.perf_counter()
        x, seen = self._tensor(lm, image)
        return self._run(lm, x, seen, t0)

    def compare(self, adapters: list[AdapterInfo | str | os.PathLike], image: Image.Image) -> Comparison:
        """Each adapter on ``image``; the image is preprocessed once per distinct preprocessing (once for
        adapters of one backbone). A failing adapter gives its error in its row; the others still run.
        Latency: the adapter's share of preprocessing + its forward pass."""
        before = process_memory(self.device)
        tensors: dict[str, tuple[torch.Tensor, Image.Image, float]] = {}
        rows = []
        for adapter in adapters:
            info = adapter if isinstance(adapter, AdapterInfo) else None
            start = process_memory(self.device)
            try:
                lm = self.load(adapter)
                pkey = json.dumps(lm.config.data_config, sort_keys=True, default=str)
                if pkey not in tensors:
                    t0 = time.perf_counter()
                    x, seen = self._tensor(lm, image)
                    tensors[pkey] = (x, seen, time.perf_counter() - t0)
                x, seen, pre_s = tensors[pkey]
                pred = self._run(lm, x, seen, time.perf_counter() - pre_s)
                rows.append(CompareRow(info or adapter, pred, None, process_memory(self.device) - start))
            except (InferenceError, ValueError, RuntimeError) as e:  # one failing adapter must not hide the others
                rows.append(CompareRow(info or adapter, None, str(e), process_memory(self.device) - start))
        return Comparison(rows, process_memory(self.device) - before, len(tensors))

    def explain(self, adapter: AdapterInfo | str | os.PathLike, image: Image.Image,
                class_idx: int | None = None) -> Image.Image:
        """Grad-CAM overlay (on the preprocessed image) for ``class_idx`` (default: the top class)."""
        from .gradcam import GradCamError, grad_cam, overlay

        lm = self.load(adapter)
        x, seen = self._tensor(lm, image)
        with lm.lock:
            model = lm.model
            if class_idx is None:
                with torch.inference_mode():
                    class_idx = int(model(x)[0].argmax())
            if not 0 <= class_idx < lm.config.num_classes:
                raise InferenceError(f"class index {class_idx} out of range (0..{lm.config.num_classes - 1})")
            try:
                cam = grad_cam(model, x, class_idx)
            except (GradCamError, AttributeError, MethodError) as e:
                raise InferenceError(f"Grad-CAM is not available for this model: {e}") from e
            finally:
                model.zero_grad(set_to_none=True)
        return overlay(seen, cam)
