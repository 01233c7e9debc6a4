"""Resumable checkpoints for both training loops, written atomically (a new folder swapped in):

    adapter.safetensors   the trainable tensors (adapters.io.adapter_state_dict)
    trainer_state.pt      optimizer / scheduler / RNG / EMA state: tensors and primitives only,
                          read back with ``torch.load(weights_only=True)`` (no code runs on load)
    state.json            epoch or step counters, best score, history
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from adapters.io import adapter_state_dict, load_adapter_weights, save_tensors


def save_checkpoint(path: Path, model, trainer_state: dict, state: dict) -> None:
    """Write the checkpoint folder as ``<name>.tmp`` and swap it in; a failed write (a full disk) removes
    the half-written folder and leaves the previous checkpoint as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_tensors(adapter_state_dict(model), str(tmp / "adapter.safetensors"))
        torch.save(trainer_state, tmp / "trainer_state.pt")
        (tmp / "state.json").write_text(json.dumps(state))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def save_best(model, path: Path) -> None:
    """The best-validation epoch's trainable tensors, atomically (a temporary file renamed; removed if the
    write fails)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_tensors(adapter_state_dict(model), str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, model) -> tuple[dict, dict]:
    """Restore the adapter tensors into ``model``; return (trainer_state, state)."""
    path = Path(path)
    load_adapter_weights(model, path / "adapter.safetensors")
    trainer_state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    return trainer_state, json.loads((path / "state.json").read_text())


def rng_state() -> dict:
    """Every random state a training epoch draws from: Python's, NumPy's legacy global, torch's CPU and
    CUDA generators. Plain tensors, ints and tuples only, so ``torch.load(weights_only=True)`` reads it."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                                                    "pos": int(pos), "has_gauss": int(has_gauss),
                                                    "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (a checkpoint from before this format restores torch's only)."""
    import random

    import numpy as np

    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_seed(seed: int, epoch: int) -> int:
    """The train loader's generator seed for ``epoch`` of training seed ``seed``: the shuffle order and
    the loader workers' seeds of an epoch do not depend on how the run got there (straight or resumed)."""
    return (seed * 1_000_003 + epoch) % 2**63
