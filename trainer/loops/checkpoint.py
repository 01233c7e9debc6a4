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
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_tensors(adapter_state_dict(model), str(tmp / "adapter.safetensors"))
    torch.save(trainer_state, tmp / "trainer_state.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model) -> tuple[dict, dict]:
    """Restore the adapter tensors into ``model``; return (trainer_state, state)."""
    path = Path(path)
    load_adapter_weights(model, path / "adapter.safetensors")
    trainer_state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    return trainer_state, json.loads((path / "state.json").read_text())
