"""Foundation checkpoints as backbone initialisations (self-supervised chest-radiograph ViTs and others).

MED-PEFT (Lian et al., "Less Could Be Better: Parameter-efficient Fine-tuning Advances Medical Vision
Foundation Models", arXiv 2401.12215) fine-tunes ViT-B/16 foundation models pre-trained with MRM
(masked record modeling) and CXR-MAE. Their weights come as MAE-style ``.pth`` files, saved by MAE's
``main_pretrain.py`` as ``{"model": state_dict, "optimizer": ..., "epoch": ..., "scaler": ...,
"args": argparse.Namespace}``; bare state dicts and ``.safetensors`` files work too.

Reading is safe: ``.safetensors`` holds tensors only, and a ``.pth`` is read only with
``torch.load(weights_only=True)`` plus an explicit allow-list (:data:`SAFE_GLOBALS`: argparse.Namespace).
A file that needs anything else is refused (:class:`CheckpointError` naming the class); nothing in it runs.
``python -m adapters convert-checkpoint IN.pth OUT.safetensors`` keeps the tensors only: still with
``weights_only=True``, any other class or function the pickle names becomes an inert placeholder
(:class:`Inert`) that is never called; modules torch never loads (os, sys) are refused even then.

Keys are handled as MAE's ``main_finetune.py`` does: the pre-training decoder (``decoder_*``),
``mask_token`` and any pre-training head are dropped; ``module.``/``encoder.``/``backbone.`` prefixes are
stripped; ``pos_embed`` is interpolated (bicubic, as MAE's ``interpolate_pos_embed``) to the model's patch
grid; the rest loads with ``strict=False`` and the missing / unexpected keys are reported
(:class:`LoadReport`). With MAE's global-pool fine-tuning (timm ``global_pool="avg"``, ``fc_norm=True``)
the expected report is: missing ``head.*`` and ``fc_norm.*``, unexpected ``norm.*``.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .core import BackboneError, save_tensors

SAFE_GLOBALS = [argparse.Namespace]
"""The only classes (besides tensors and plain containers) a ``.pth`` checkpoint may carry."""

NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # MED-PEFT copies each grayscale radiograph to 3 channels and normalises with the statistics of the
    # foundation model's pre-training data.
    "mrm": ((0.4978,) * 3, (0.2449,) * 3),
    "cxr_mae": ((0.4785,) * 3, (0.2834,) * 3),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
STRIP_PREFIXES = ("module.", "encoder.", "backbone.")
# Pre-training-only tensors: MAE's decoder (decoder_embed, decoder_blocks, decoder_norm, decoder_pred,
# decoder_pos_embed), the mask token, and heads (a fine-tuning head is always fresh).
DROP_PATTERN = re.compile(r"^(decoder[._]|mask_token$|head\.|heads\.)")
STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "model_state")
HUB_PREFIX = "hf-hub:"
HUB_DEFAULT_FILES = ("model.safetensors", "pytorch_model.bin")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".tar")


class CheckpointError(BackboneError):
    """A checkpoint cannot be found, read safely, or matched to the backbone."""


@dataclass
class LoadReport:
    """What loading a checkpoint into a backbone did (recorded in medpeft.json and results.json)."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    stripped_prefixes: list[str] = field(default_factory=list)
    pos_embed: str | None = None  # "interpolated 14x14 -> 28x28" when resampled

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        text = (f"init checkpoint {self.source}: {self.loaded} tensors loaded, "
                f"{len(self.missing)} missing {self.missing[:6]}, {len(self.unexpected)} unexpected "
                f"{self.unexpected[:6]}, {len(self.dropped)} pre-training tensors dropped")
        return text + (f"; pos_embed {self.pos_embed}" if self.pos_embed else "")


def normalization(preset: str) -> tuple[list[float], list[float]]:
    """(mean, std) of a named preset (:data:`NORMALIZATION_PRESETS`)."""
    try:
        mean, std = NORMALIZATION_PRESETS[preset.lower()]
    except KeyError:
        raise CheckpointError(f"unknown normalisation preset {preset!r}; "
                              f"known: {', '.join(NORMALIZATION_PRESETS)}") from None
    return list(mean), list(std)


def resolve(source: str | os.PathLike) -> Path:
    """A local file for ``source``: a path, ``hf-hub:org/name[/file]``, or an ``org/name`` Hub repo."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if text.startswith(HUB_PREFIX):
        parts = text[len(HUB_PREFIX):].split("/")
        if len(parts) < 2 or not all(parts):
            raise CheckpointError(f"{text!r}: expected hf-hub:org/name or hf-hub:org/name/path/to/file")
        return _hub_download("/".join(parts[:2]), ["/".join(parts[2:])] if len(parts) > 2 else HUB_DEFAULT_FILES)
    if _REPO_ID.match(text) and not text.lower().endswith(_WEIGHT_SUFFIXES):
        return _hub_download(text, HUB_DEFAULT_FILES)
    raise CheckpointError(f"checkpoint not found: {text} (a local .pth/.safetensors file, hf-hub:org/name/file, "
                          f"or a Hub repo id org/name)")


def _hub_download(repo_id: str, filenames) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError

    last: Exception | None = None
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id, filename))
        except EntryNotFoundError as e:
            last = e
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated ...: one clear message
            raise CheckpointError(f"could not download {filename} from the Hub repo {repo_id} "
                                  f"({e.__class__.__name__}); give a local checkpoint file instead") from None
    raise CheckpointError(f"Hub repo {repo_id} has none of {list(filenames)} ({last.__class__.__name__})")


class Inert:
    """What :func:`read_checkpoint` with ``inert=True`` puts where a pickle names a class or function
    outside the allow-list: a placeholder built from nothing, so the named object is never called."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


_MAX_INERT = 64


def read_checkpoint(source: str | os.PathLike, inert: bool = False) -> dict[str, torch.Tensor]:
    """The state dict (tensors only) of a checkpoint file, read safely; MAE's ``{"model": ...}`` unwrapped.

    A ``.pth`` needing a class outside :data:`SAFE_GLOBALS` is refused, unless ``inert`` (what
    ``convert-checkpoint`` uses): each such class or function is then replaced by :class:`Inert`, so it
    never runs, and only the tensors are kept. Modules torch never loads (os, sys, ...) are refused always.
    """
    path = resolve(source)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - a corrupt or non-safetensors file
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    placeholders: list[str] = []
    while True:
        try:
            allowed = SAFE_GLOBALS + [(Inert, name) for name in placeholders]
            with torch.serialization.safe_globals(allowed):
                obj = torch.load(path, map_location="cpu", weights_only=True)
            break
        except pickle.UnpicklingError as e:
            found = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(e))))
            blocked = "is blocked" in str(e)
            # torch names builtins without their module ("exec" for builtins.exec)
            full = [name if "." in name else f"builtins.{name}" for name in found]
            if inert and full and not blocked and not set(full) & set(placeholders) \
                    and len(placeholders) < _MAX_INERT:
                placeholders += full
                continue
            raise CheckpointError(_refusal(path, found, blocked, inert)) from None
        except (RuntimeError, EOFError, OSError) as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({e.__class__.__name__}: "
                                  f"{first})") from None
    return tensors_of(obj, str(path))


def _refusal(path: Path, found: list[str], blocked: bool, inert: bool) -> str:
    what = ", ".join(found) or "an object outside the allow-list"
    if blocked:
        return (f"{path} was refused: its pickle calls {what}, from a module that is never loaded; "
                f"this file tries to run code: do not use it")
    allow = ", ".join(c.__module__ + "." + c.__qualname__ for c in SAFE_GLOBALS)
    if inert:
        return f"{path} was refused: its pickle uses {what} in a way that cannot be read without running it"
    return (f"{path} was refused: it holds {what}, which is not on the allow-list of classes a checkpoint "
            f"may carry ({allow}); loading it could run code. Convert it once (keeps the tensors only, runs "
            f"nothing): python -m adapters convert-checkpoint {path} {path.with_suffix('.safetensors')}")


def tensors_of(obj, source: str) -> dict[str, torch.Tensor]:
    """The tensor entries of a state dict, or of the state dict a training checkpoint wraps."""
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{source} holds no tensors (keys: {list(obj)[:8]})")
    return state


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Write the tensors of ``src`` (read safely) to a ``.safetensors`` file; returns the tensor count."""
    state = read_checkpoint(src, inert=True)
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"output must end in .safetensors, got {dst.name}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors sharing storage: give each its own.
    save_tensors({k: v.detach().clone().contiguous() for k, v in state.items()}, str(dst),
              metadata={"source": Path(str(src)).name})
    return len(state)


def remap_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(state without wrapper prefixes and pre-training tensors, dropped keys, prefixes stripped)."""
    out, dropped, stripped = {}, [], []
    for key, value in state.items():
        name = key
        changed = True
        while changed:
            changed = False
            for prefix in STRIP_PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    changed = True
                    if prefix not in stripped:
                        stripped.append(prefix)
        if DROP_PATTERN.match(name):
            dropped.append(key)
        else:
            out[name] = value
    return out, dropped, stripped


def _resample_pos_embed(model: nn.Module, posemb: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    from timm.layers import resample_abs_pos_embed

    target = model.pos_embed
    if posemb.shape == target.shape or posemb.ndim != 3 or posemb.shape[2] != target.shape[2]:
        return posemb, None  # same grid, or another width (reported as a wrong shape)
    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    old = math.isqrt(posemb.shape[1] - prefix)
    if old * old != posemb.shape[1] - prefix:
        raise CheckpointError(f"pos_embed of shape {tuple(posemb.shape)} cannot be resampled to "
                              f"{tuple(target.shape)} ({prefix} prefix tokens)")
    grid = list(model.patch_embed.grid_size)
    # As MAE's interpolate_pos_embed: bicubic, align_corners=False, prefix (cls) tokens kept as they are.
    new = resample_abs_pos_embed(posemb, grid, old_size=[old, old], num_prefix_tokens=prefix,
                                 interpolation="bicubic", antialias=False)
    return new, f"interpolated {old}x{old} -> {grid[0]}x{grid[1]}"


def load_init_checkpoint(model: nn.Module, source: str | os.PathLike) -> LoadReport:
    """Load a foundation checkpoint into ``model`` (in place) as MAE fine-tuning does; returns the report."""
    state, dropped, stripped = remap_keys(read_checkpoint(source))
    report = LoadReport(source=str(source), dropped=dropped, stripped_prefixes=stripped)
    own = model.state_dict()
    if "pos_embed" in state and "pos_embed" in own:
        state["pos_embed"], report.pos_embed = _resample_pos_embed(model, state["pos_embed"])
    matched = [k for k in state if k in own]
    if not matched:
        raise CheckpointError(f"{source}: no key of the checkpoint matches the backbone "
                              f"{type(model).__name__} (checkpoint keys e.g. {list(state)[:4]}, after dropping "
                              f"{len(dropped)} pre-training keys; the backbone expects e.g. {list(own)[:4]}). "
                              f"Is it a checkpoint of this architecture?")
    wrong = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in matched if state[k].shape != own[k].shape]
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(f"{source}: {len(wrong)} tensor(s) of the wrong shape for this backbone, e.g. "
                              f"{k} is {got}, the backbone has {want} (another model size or patch size?)")
    result = model.load_state_dict(state, strict=False)
    report.loaded = len(matched)
    report.missing = sorted(result.missing_keys)
    report.unexpected = sorted(result.unexpected_keys)
    return report
