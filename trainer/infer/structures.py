"""One method applied once to a shared frozen base (:func:`build_structure`), for :mod:`.serving`.

A structure is a module tree that aliases every tensor of the base (:func:`aliasing_copy`), with the method
applied to it by :func:`adapters.apply_method`; what an adapter file writes lives in flat slots (one tensor
per dtype and device) that :mod:`.serving` swaps per adapter; frozen copies of base weights the method made
are turned back into views of the base (:func:`base_chunk`); other tensors the method made are constants.
Nothing here names a method: the registry's metadata (``saved_buffers``, ``peft``) says what trains."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapters import get_method
from adapters.io import apply_method, is_peft, load_adapter_weights


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``): building a structure allocates and
    frees copies (e.g. LoRA's split q/k/v before they become views of the base), which would otherwise stay
    in the process's resident size."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to do
        pass


def _storage(t: torch.Tensor) -> tuple:
    return (t.device, t.untyped_storage().data_ptr())


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _entries(model: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor, bool]]:
    """(module, attribute, tensor, is_parameter) for every parameter and buffer a module owns directly."""
    out = []
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                out.append((module, name, p, True))
        for name, b in module._buffers.items():
            if b is not None:
                out.append((module, name, b, False))
    return out


def _rebind(entries, tensor: torch.Tensor, new: torch.Tensor) -> None:
    """Point every module attribute holding ``tensor`` at ``new`` (parameters keep their object)."""
    for module, name, t, is_param in entries:
        if t is tensor:
            if is_param:
                t.data = new
            else:
                module._buffers[name] = new


def aliasing_copy(base: nn.Module) -> nn.Module:
    """A new module tree whose parameters and buffers are the base's own storage (no tensor copied).
    Parameters are new objects (their ``requires_grad`` is the copy's), so a method may switch some on."""
    memo: dict[int, Any] = {}
    for p in base.parameters():
        memo[id(p)] = nn.Parameter(p.detach(), requires_grad=False)
    for b in base.buffers():
        memo[id(b)] = b
    return copy.deepcopy(base, memo)


def base_chunk(t: torch.Tensor, by_shape: dict) -> torch.Tensor | None:
    """A view of a base tensor equal to ``t`` (the tensor itself, or a block of its leading rows)."""
    for w in by_shape.get((t.dtype, t.device, tuple(t.shape[1:])), ()):
        rows = t.shape[0] if t.dim() else 1
        total = w.shape[0] if w.dim() else 1
        if not rows or total % rows:
            continue
        for k in range(total // rows):
            view = w[k * rows:(k + 1) * rows] if w.dim() else w
            if t.dim() and not torch.equal(view.reshape(-1)[:1], t.reshape(-1)[:1]):
                continue
            if torch.equal(view, t):
                return view
    return None


@dataclass
class Structure:
    """A method applied once to a shared base. ``flats`` hold what an adapter file writes (swapped per
    adapter); ``constants`` are the other tensors the method made that are not the base's (e.g. BOFT's
    permutations): the same for every adapter of the structure, kept once."""

    key: tuple
    model: nn.Module
    flats: dict[tuple, torch.Tensor]
    shared_bytes: int          # tensors aliasing the base
    aliased_views: int         # frozen tensors the method copied from the base, turned back into views
    active: str | None = None  # the adapter whose tensors are in the slots
    adapters: set = field(default_factory=set)
    constants: list = field(default_factory=list)

    @property
    def private_bytes(self) -> int:
        return nbytes(self.flats.values()) + nbytes(self.constants)

    def load(self, path: Path) -> None:
        """Read an adapter file into this structure (:func:`adapters.io.load_adapter_weights`: names and
        shapes checked). A constant the load wrote to (its version counter moved) becomes a slot: what a
        file writes is always swapped per adapter."""
        versions = [t._version for t in self.constants]
        load_adapter_weights(self.model, path)
        written = [t for t, v in zip(self.constants, versions) if t._version != v]
        if written:
            ids = {id(t) for t in written}
            self.constants = [t for t in self.constants if id(t) not in ids]
            self.flats = _assemble(self.model, _slot_tensors(self.model, self.flats) + written)


def _adapter_tensor_ids(model: nn.Module) -> set[int]:
    """The tensors an adapter file writes: trainable parameters, the method's saved buffers, and whatever
    peft's state dict holds (e.g. a tuner's saved projections)."""
    ids = {id(p) for p in model.parameters() if p.requires_grad}
    method = get_method(model.medpeft_method)
    buffers = dict(model.named_buffers())
    if method.saved_buffers is not None and not is_peft(model):
        ids |= {id(buffers[n]) for n in method.saved_buffers(model)}
    if is_peft(model):
        from peft import get_peft_model_state_dict

        ptrs = {_storage(v) for v in get_peft_model_state_dict(model).values()}
        ids |= {id(t) for _, _, t, _ in _entries(model) if _storage(t) in ptrs}
    return ids


def _assemble(model: nn.Module, tensors: list[torch.Tensor]) -> dict[tuple, torch.Tensor]:
    """Move ``tensors`` (bound in ``model``) into one flat tensor per (dtype, device); each module attribute
    then holds a view of it. Returns the flats."""
    entries = _entries(model)
    groups: dict[tuple, list] = {}
    for t in tensors:
        groups.setdefault((t.dtype, str(t.device)), []).append(t)
    flats = {}
    for gkey, ts in groups.items():
        flat = torch.empty(sum(t.numel() for t in ts), dtype=ts[0].dtype, device=ts[0].device)
        offset = 0
        for t in ts:
            view = flat[offset:offset + t.numel()].view(t.shape)
            view.copy_(t.detach())
            _rebind(entries, t, view)
            offset += t.numel()
        flats[gkey] = flat
    return flats


def _slot_tensors(model: nn.Module, flats: dict[tuple, torch.Tensor]) -> list[torch.Tensor]:
    """The tensors bound in ``model`` that are views of ``flats``."""
    ptrs = {_storage(f) for f in flats.values()}
    out, seen = [], set()
    for _, _, t, _ in _entries(model):
        if _storage(t) in ptrs and id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def build_structure(base: nn.Module, key: tuple, method: str, hparams: dict, num_classes: int | None,
                    device: torch.device) -> Structure:
    """Apply ``method`` once to an aliasing copy of ``base`` and move what it owns into flat slots."""
    model = aliasing_copy(base)
    base_ptrs = {_storage(t) for t in list(base.parameters()) + list(base.buffers())}
    with torch.random.fork_rng(devices=[]):  # anything the method draws (heads, inits) is the same every time
        torch.manual_seed(0)
        if num_classes is not None and getattr(model, "num_classes", num_classes) != num_classes:
            model.reset_classifier(num_classes)
        model = apply_method(model, method, **hparams)
    model.to(device).eval()
    entries = _entries(model)
    trained = _adapter_tensor_ids(model)
    by_shape: dict[tuple, list] = {}
    for t in list(base.parameters()) + list(base.buffers()):
        by_shape.setdefault((t.dtype, t.device, tuple(t.shape[1:])), []).append(t.detach())
    seen, slots, constants, shared, aliased = set(), [], [], 0, 0
    for _module, _name, t, _is_param in entries:
        if id(t) in seen:
            continue
        seen.add(id(t))
        if _storage(t) in base_ptrs:
            if id(t) not in trained:
                shared += t.numel() * t.element_size()
                continue
            # the method trains a tensor of the base itself (BitFit's biases, BatchNorm statistics): own copy
        elif id(t) not in trained:
            view = base_chunk(t.detach(), by_shape)
            if view is not None:
                _rebind(entries, t, view)
                shared += t.numel() * t.element_size()
                aliased += 1
                continue
        (slots if id(t) in trained else constants).append(t)
    flats = _assemble(model, slots)
    return Structure(key=key, model=model, flats=flats, shared_bytes=shared, aliased_views=aliased,
                     constants=constants)
