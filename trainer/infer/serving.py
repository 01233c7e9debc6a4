"""Many adapters on one frozen base: the serving layer of the app, ``trainer.infer`` and the Generate tab.

    server = AdapterServer(create_base=lambda cfg: create_backbone(cfg.backbone, cfg.num_classes), base_key=...)
    served = server.load(folder)                 # first load: the method put on the shared base, tensors read
    logits = server.forward(served, x)           # switch (if another adapter of its structure is active) + forward

How it shares, generically over the registry (:mod:`adapters.registry`; nothing here names a method):

- **One base** per base key (backbone, resolution, pretrained, init checkpoint / preset, pooling): created
  once, frozen, never written.
- **One structure** (:mod:`.structures`) per (base, method, hyper-parameters, class count): a module tree that *aliases every
  tensor of the base* (a ``copy.deepcopy`` whose memo maps each base tensor to itself, parameters re-wrapped
  so ``requires_grad`` is the structure's own), on which the method is applied once with
  :func:`adapters.apply_method`. peft methods (LoRA, DoRA, LN tuning, the peft tuners) get peft's own layers
  there (``get_peft_model``; on the U-Net diffusers' ``add_adapter``), hand-written methods their modules.
- What the method trains (trainable parameters, :attr:`Method.saved_buffers` such as BatchNorm statistics,
  the tensors peft's state dict holds) is made private to the structure; frozen tensors the method built by
  copying base weights (LoRA's split q/k/v) are found by value and turned back into views of the base
  tensors. What an adapter file writes then lives in one flat slot per dtype (a tensor the first load writes
  that was not foreseen joins them: version counters tell); other tensors the method made (e.g. BOFT's
  permutations) are the structure's constants, kept once.
- **Each adapter** is its tensors (read with :func:`adapters.io.load_adapter_weights`, which checks names
  and shapes, into the slots) kept as one flat copy per dtype; its config carries its class names and
  calibration temperature. **Switching** adapters of one structure copies that flat tensor into the slots:
  one copy per dtype, exact (A -> B -> A gives A's bits). Switching between structures costs nothing.

Memory: the base once; per structure only what the method adds beyond the base (one adapter's worth of
slots and any frozen tensors it could not alias); per adapter its own tensors. Merged models (the method
folded into plain weights: a full copy of the base each) are optional, built only while they fit in
``merged_budget_bytes`` (the app's ``MEDPEFT_SERVE_MEMORY_MB``), least recently used dropped first.

Concurrency: **serialised per base**. Every structure of a base shares its tensors, and a structure's slots
hold one adapter at a time, so a request holds its base's lock (``SharedBase.lock``, re-entrant) across the
switch and the forward (and Grad-CAM's backward); requests on different bases run in parallel. A forward
already uses every core (CPU) or the whole device, so little throughput is lost.
"""
from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable

import torch
from torch import nn

from adapters import MethodError, NotMergeable, merge_method
from adapters.io import WEIGHTS_NAME, AdapterConfig, read_config

from .store import InferenceError
from .structures import Structure, build_structure, nbytes, release_freed_memory

log = logging.getLogger(__name__)


@dataclass
class SharedBase:
    key: Hashable
    model: nn.Module
    lock: threading.RLock = field(default_factory=threading.RLock)
    structures: dict[tuple, Structure] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return nbytes(list(self.model.parameters()) + list(self.model.buffers()))


@dataclass
class ServedAdapter:
    """One adapter on a shared base: its config (class names, temperature, preprocessing) and tensors."""

    key: str
    folder: Path
    config: AdapterConfig
    base: SharedBase
    structure: Structure
    tensors: dict[tuple, torch.Tensor]
    load_s: float = 0.0
    stamp: tuple | None = None  # the weights file's (mtime, size) when loaded

    @property
    def bytes(self) -> int:
        """What this adapter holds of its own (its tensors, kept for switching)."""
        return nbytes(self.tensors.values())


def stamp(folder: Path) -> tuple | None:
    try:
        st = (folder / WEIGHTS_NAME).stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def structure_key(cfg: AdapterConfig, num_classes: int | None) -> tuple:
    return (cfg.method, json.dumps(cfg.hparams or {}, sort_keys=True, default=str), num_classes)


class AdapterServer:
    """Bases, structures and adapters (see the module docstring).

    create_base(cfg) -> frozen module: the base for an adapter's config (called once per ``base_key(cfg)``).
    num_classes(cfg): the class count a structure is built for (None: leave the base's head, e.g. a U-Net).
    merged_budget_bytes: memory for merged copies (0: never merge).
    """

    def __init__(self, create_base: Callable[[AdapterConfig], nn.Module], base_key: Callable[[AdapterConfig], Hashable],
                 device: str | torch.device = "cpu", merged_budget_bytes: int = 0,
                 num_classes: Callable[[AdapterConfig], int | None] = lambda cfg: cfg.num_classes):
        self.create_base, self.base_key, self.num_classes = create_base, base_key, num_classes
        self.device = torch.device(device)
        self.merged_budget_bytes = int(merged_budget_bytes)
        self._lock = threading.Lock()
        self._build_locks: dict[Any, threading.Lock] = {}
        self.bases: dict[Hashable, SharedBase] = {}
        self.adapters: dict[str, ServedAdapter] = {}
        self._merged: OrderedDict[str, tuple[nn.Module, int]] = OrderedDict()
        self._merge_failed: dict[str, str] = {}

    def _build_lock(self, key) -> threading.Lock:
        with self._lock:
            return self._build_locks.setdefault(key, threading.Lock())

    # -- loading
    def base(self, cfg: AdapterConfig) -> SharedBase:
        key = self.base_key(cfg)
        with self._build_lock(("base", key)):
            if key not in self.bases:
                model = self.create_base(cfg).to(self.device).eval()
                for p in model.parameters():
                    p.requires_grad_(False)
                self.bases[key] = SharedBase(key=key, model=model)
            return self.bases[key]

    def structure(self, base: SharedBase, cfg: AdapterConfig) -> Structure:
        n = self.num_classes(cfg)
        key = structure_key(cfg, n)
        with self._build_lock(("structure", base.key, key)):
            if key not in base.structures:  # reads the base only: requests on it go on meanwhile
                base.structures[key] = build_structure(base.model, key, cfg.method, dict(cfg.hparams or {}), n,
                                                       self.device)
                release_freed_memory()
            return base.structures[key]

    def load(self, folder: str | Path, config: AdapterConfig | None = None, key: str | None = None) -> ServedAdapter:
        """The adapter in ``folder`` on its shared base (loaded once; later calls return it)."""
        folder = Path(folder)
        key = key or str(folder.resolve())
        served = self.adapters.get(key)
        if served is not None and served.stamp == stamp(folder):
            return served
        with self._build_lock(("adapter", key)):
            served = self.adapters.get(key)
            now = stamp(folder)
            if served is not None:
                if served.stamp == now:
                    return served
                self.unload(key)  # the folder was written again (e.g. retrained): load the new tensors
            t0 = time.perf_counter()
            cfg = config if config is not None and served is None else read_config(folder)
            base = self.base(cfg)
            structure = None
            try:
                structure = self.structure(base, cfg)
                with base.lock:
                    layout = {k: f.numel() for k, f in structure.flats.items()}
                    structure.load(folder / WEIGHTS_NAME)
                    if layout != {k: f.numel() for k, f in structure.flats.items()} and structure.adapters:
                        for other in list(structure.adapters):  # their tensors no longer fit the slots: reload
                            self.adapters.pop(other, None)
                        structure.adapters.clear()
                    tensors = {k: f.clone() for k, f in structure.flats.items()}
                    structure.active = key
            except MethodError as e:
                if structure is not None and not structure.adapters:
                    base.structures.pop(structure.key, None)
                raise InferenceError(f"the adapter in {folder.name} does not fit its backbone: {e}") from e
            structure.adapters.add(key)
            served = ServedAdapter(key=key, folder=folder, config=cfg, base=base, structure=structure,
                                   tensors=tensors, load_s=time.perf_counter() - t0, stamp=now)
            self.adapters[key] = served
            return served

    def unload(self, key: str) -> None:
        served = self.adapters.pop(key, None)
        self._merged.pop(key, None)
        self._merge_failed.pop(key, None)
        if served is not None:
            with served.base.lock:
                served.structure.adapters.discard(key)
                if not served.structure.adapters:  # the last adapter of its structure: drop the structure
                    served.base.structures.pop(served.structure.key, None)
                elif served.structure.active == key:
                    served.structure.active = None

    # -- running
    def activate(self, served: ServedAdapter) -> nn.Module:
        """Put ``served``'s tensors in its structure's slots; returns the module to call. Hold
        ``served.base.lock`` from this call until the module's output (and any backward) is done."""
        s = served.structure
        if s.active != served.key:
            with torch.no_grad():
                for k, flat in s.flats.items():
                    flat.copy_(served.tensors[k])
            s.active = served.key
        return s.model

    def module(self, served: ServedAdapter) -> nn.Module:
        """The module computing ``served``'s raw outputs now: its cached merged copy, else its structure with
        its tensors switched in. Hold ``served.base.lock`` until done with it."""
        merged = self._merged.get(served.key)
        if merged is not None:
            self._merged.move_to_end(served.key)
            return merged[0]
        return self.activate(served)

    def forward(self, served: ServedAdapter, x: torch.Tensor) -> torch.Tensor:
        """Raw logits (the caller applies the adapter's temperature) under the base's lock."""
        with served.base.lock, torch.inference_mode():
            return self.module(served)(x)

    # -- merged copies (optional, under a byte budget)
    def merge(self, served: ServedAdapter, probe: torch.Tensor) -> nn.Module | None:
        """Build (or return) a merged copy of ``served``, checked on ``probe`` to give its outputs, and cache
        it while it fits in the budget. None where the budget is 0 or too small, the method cannot merge, or
        merging did not reproduce the outputs (the reason: ``merge_note``)."""
        key = served.key
        if key in self._merged:
            self._merged.move_to_end(key)
            return self._merged[key][0]
        if self.merged_budget_bytes <= 0 or key in self._merge_failed:
            return None
        size = served.base.bytes
        if size > self.merged_budget_bytes:
            self._merge_failed[key] = f"a merged copy ({size / 2 ** 20:.0f} MB) exceeds the serving memory budget"
            return None
        with served.base.lock, torch.no_grad():
            model = self.activate(served)
            try:
                candidate = merge_method(copy.deepcopy(model)).eval()
            except NotMergeable:
                self._merge_failed[key] = f"{served.config.method} cannot be merged: served with its adapter modules"
                return None
            except (MethodError, RuntimeError) as e:
                self._merge_failed[key] = f"not merged ({e})"
                return None
            ref, out = model(probe), candidate(probe)
            if out.shape != ref.shape or float((out - ref).abs().max()) > 1e-4 * (1.0 + float(ref.abs().max())):
                self._merge_failed[key] = "merged weights did not reproduce the adapter's outputs: running unmerged"
                return None
        self._merged[key] = (candidate, size)
        while sum(b for _, b in self._merged.values()) > self.merged_budget_bytes and len(self._merged) > 1:
            self._merged.popitem(last=False)
        return candidate

    def merge_note(self, key: str) -> str:
        return self._merge_failed.get(key, "")

    def is_merged(self, key: str) -> bool:
        return key in self._merged

    # -- accounting
    def memory(self) -> dict[str, int]:
        """Bytes held: bases, structures' own tensors (slots + constants), adapters' own tensors, merged copies."""
        return {"bases": sum(b.bytes for b in self.bases.values()),
                "structures": sum(s.private_bytes for b in self.bases.values() for s in b.structures.values()),
                "adapters": sum(a.bytes for a in self.adapters.values()),
                "merged": sum(b for _, b in self._merged.values())}
