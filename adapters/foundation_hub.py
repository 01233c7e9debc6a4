"""Build a preset's backbone: fetch its Hub repo (or read a local copy), convert once, cache as safetensors.

    create_foundation("rad-dino", num_classes=0)                         # downloads microsoft/rad-dino
    create_foundation("rad-dino", 3, init_checkpoint="/models/rad-dino")  # a local copy laid out as the repo
    create_foundation("rad-dino", 3, pretrained=False)                    # random weights, preset's config

The architecture comes from the repo's own config (``config.json``, ``open_clip_config.json``), the input
size and normalisation from its preprocessing config (``preprocessor_config.json``, ``open_clip_config.json``'s
``preprocess_cfg``, timm's ``pretrained_cfg``), falling back to the preset. The converted weights are cached
under ``$MEDPEFT_CACHE`` (default ``~/.cache/medpeft``)``/foundation/<key>.safetensors``, keyed by the
source files' identity (name, size, mtime), with the spec in the file's metadata; nothing there is a pickle.

A refused download (gated repo, no token) is one line saying which licence to accept, where, and to set
``HF_TOKEN`` (:func:`adapters.foundation.access_hint`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .core import BackboneError, save_tensors
from .convert import ConversionError, FoundationViT, build, resample_pos_embed, spec_from_config
from .convert_state import convert_state
from .foundation import Preset, access_hint, find_preset

CONFIG_FILES = ("config.json", "open_clip_config.json", "preprocessor_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "open_clip_model.safetensors",
                "pytorch_model.bin", "pytorch_model.bin.index.json", "open_clip_pytorch_model.bin")
CACHE_VERSION = "1"
RANDOM_INIT_SEED = 0  # = adapters.backbones.RANDOM_INIT_SEED (not imported: backbones imports this module)


class FoundationAccessError(BackboneError):
    """The Hub refused (gated, no token) or could not be reached."""


def cache_dir() -> Path:
    root = os.environ.get("MEDPEFT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "medpeft")
    return Path(root) / "foundation"


# ------------------------------------------------------------------------------------------ fetching
def fetch_repo(preset: Preset) -> Path:
    """The preset's Hub repo in the local Hub cache (configs + one set of weights), downloaded if needed."""
    from huggingface_hub import HfApi, hf_hub_download

    try:
        files = [s.rfilename for s in (HfApi().model_info(preset.hub_id).siblings or [])]
    except Exception as e:  # noqa: BLE001 - offline, gated, unknown: one clear line
        files = None
        error = e
    if files is None:
        try:  # offline with a cached copy: whatever the local cache holds
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(preset.hub_id, local_files_only=True))
        except Exception:  # noqa: BLE001
            raise _access_error(preset, error) from None
    wanted = [f for f in CONFIG_FILES if f in files] + _weight_files(preset, files)
    if not any(f in files for f in ("config.json", "open_clip_config.json")) and preset.source != "mae":
        raise FoundationAccessError(f"{preset.hub_id} has no config.json / open_clip_config.json")
    path = None
    for name in wanted:
        try:
            path = Path(hf_hub_download(preset.hub_id, name))
        except Exception as e:  # noqa: BLE001
            raise _access_error(preset, e) from None
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            for shard in shards:
                try:
                    hf_hub_download(preset.hub_id, shard)
                except Exception as e:  # noqa: BLE001
                    raise _access_error(preset, e) from None
    if path is None:
        raise FoundationAccessError(f"{preset.hub_id} holds none of the expected files")
    return path.parent


def _weight_files(preset: Preset, files: list[str]) -> list[str]:
    order = ([preset.weights_file] if preset.weights_file else []) + list(WEIGHT_FILES)
    for name in order:
        if name in files:
            return [name]
    if preset.source == "mae":  # the repo's one checkpoint file, whatever its name
        found = [f for f in files if f.endswith((".pth", ".pt", ".bin", ".safetensors"))]
        if len(found) == 1:
            return found
    raise FoundationAccessError(f"{preset.hub_id} has none of the weight files {order}")


def _access_error(preset: Preset, e: Exception) -> FoundationAccessError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, GatedRepoError) or (status in (401, 403) and preset.gated):
        return FoundationAccessError(access_hint(preset))
    if isinstance(e, RepositoryNotFoundError):
        return FoundationAccessError(f"{preset.name}: the Hub repo {preset.hub_id} was not found (or is private; "
                                     f"set HF_TOKEN)")
    return FoundationAccessError(f"could not download {preset.name} ({preset.hub_id}) from the Hugging Face Hub "
                                 f"({e.__class__.__name__}); offline, pass --init-checkpoint DIR with a local copy "
                                 f"of the repo")


def local_repo(preset: Preset, source: str) -> Path:
    """``--init-checkpoint``: a folder laid out as the preset's repo (or, for ``mae``, the file itself)."""
    path = Path(source).expanduser()
    if path.is_dir() or (preset.source == "mae" and path.is_file()):
        return path
    raise BackboneError(f"--init-checkpoint {source}: not found; for {preset.name} give a folder laid out as its "
                        f"Hub repo {preset.hub_id or ''} (config.json / open_clip_config.json and the weights)"
                        if preset.source != "mae" else f"--init-checkpoint {source}: file not found ({preset.get})")


# ------------------------------------------------------------------------------------------ reading
def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


def repo_config(preset: Preset, folder: Path | None) -> dict[str, Any]:
    """The architecture config: the repo's own where there is a copy, else the preset's."""
    if folder is None or folder.is_file():
        return preset.config
    name = "open_clip_config.json" if preset.source == "open_clip" else "config.json"
    if (folder / name).is_file():
        return read_json(folder / name)
    if preset.source == "mae":
        return preset.config
    raise ConversionError(f"{folder}: no {name}; a copy of {preset.hub_id} must keep the repo's layout")


def weight_paths(preset: Preset, folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    names = ([preset.weights_file] if preset.weights_file else []) + list(WEIGHT_FILES)
    for name in names:
        path = folder / name
        if path.is_file():
            if name.endswith(".index.json"):
                shards = sorted(set(read_json(path)["weight_map"].values()))
                return [folder / s for s in shards]
            return [path]
    if preset.source == "mae":
        found = sorted(p for p in folder.iterdir() if p.suffix in (".pth", ".pt", ".safetensors", ".bin"))
        if len(found) == 1:
            return found
    raise ConversionError(f"{folder}: no weights ({', '.join(names)})")


def read_weights(paths: list[Path]) -> dict[str, torch.Tensor]:
    from .checkpoints import read_checkpoint

    state: dict[str, torch.Tensor] = {}
    for path in paths:
        state.update(read_checkpoint(path))  # safetensors, or a .bin read with weights_only=True
    return state


def data_cfg(preset: Preset, folder: Path | None, config: dict[str, Any], img_size: int | None) -> dict[str, Any]:
    """Input size, mean, std, interpolation and crop from the repo's preprocessing config (else the preset)."""
    out = {"size": preset.img_size, "mean": list(preset.mean), "std": list(preset.std),
           "interpolation": preset.interpolation, "crop_pct": preset.crop_pct}
    have_repo = folder is not None and folder.is_dir()
    if have_repo and preset.source == "transformers":
        out["size"] = config.get("vision_config", config).get("image_size") or out["size"]
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            out.update(_hf_preprocessing(read_json(pre), out))
    elif have_repo and preset.source == "open_clip":
        pre = config.get("preprocess_cfg", {})
        out.update({k: list(pre[k]) for k in ("mean", "std") if k in pre})
        out["interpolation"] = pre.get("interpolation", out["interpolation"])
        out["size"] = config.get("model_cfg", {}).get("vision_cfg", {}).get("image_size", out["size"])
    elif have_repo and preset.source in ("timm", "mae") and "architecture" in config:
        size = (config.get("model_args") or {}).get("img_size")
        out["size"] = size or out["size"]
        pc = config.get("pretrained_cfg") or {}
        out.update({k: list(pc[k]) for k in ("mean", "std") if k in pc})
        if "input_size" in pc:
            out["size"] = pc["input_size"][-1]
        out["interpolation"] = pc.get("interpolation", out["interpolation"])
        out["crop_pct"] = pc.get("crop_pct", out["crop_pct"])
    if isinstance(out["size"], (list, tuple)):
        out["size"] = out["size"][-1]
    if img_size:
        out["size"] = img_size
    return out


def _hf_preprocessing(pre: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "image_mean" in pre:
        out["mean"] = list(pre["image_mean"])
    if "image_std" in pre:
        out["std"] = list(pre["image_std"])
    out["interpolation"] = {2: "bilinear", 3: "bicubic", 0: "nearest"}.get(pre.get("resample"), base["interpolation"])

    def edge(v):
        if isinstance(v, dict):
            return v.get("height") or v.get("shortest_edge")
        return v

    crop = edge(pre.get("crop_size")) if pre.get("do_center_crop", False) else None
    resize = edge(pre.get("size"))
    if crop:
        out["size"], out["crop_pct"] = crop, (crop / resize if resize else 1.0)
    elif resize:
        out["size"], out["crop_pct"] = resize, 1.0
    return out


# ------------------------------------------------------------------------------------------ caching
def cache_key(preset: Preset, paths: list[Path]) -> str:
    h = hashlib.sha256(f"{CACHE_VERSION}|{preset.name}|{preset.source}".encode())
    for p in paths:
        st = p.resolve().stat()
        h.update(f"|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def converted_state(preset: Preset, spec: dict[str, Any], paths: list[Path]) -> dict[str, torch.Tensor]:
    """The source's weights under timm's names: from the cache, or converted now and cached."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = cache_dir() / f"{cache_key(preset, paths)}.safetensors"
    spec_json = json.dumps(spec, sort_keys=True)
    if path.is_file():
        try:
            with safe_open(str(path), "pt") as f:
                same = (f.metadata() or {}).get("spec") == spec_json
            if same:
                return load_file(str(path))
        except Exception:  # noqa: BLE001 - a damaged cache entry is converted again
            pass
    state = convert_state(spec, read_weights(paths))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_tensors({k: v.detach().contiguous().clone() for k, v in state.items()}, tmp,
                     metadata={"spec": spec_json, "preset": preset.name, "sources": ",".join(p.name for p in paths)})
        os.replace(tmp, path)
    except OSError:  # a read-only home: work uncached
        pass
    return state


# ------------------------------------------------------------------------------------------ create
def create_foundation(name: str, num_classes: int, pretrained: bool = True, img_size: int | None = None,
                      init_checkpoint: str | None = None, drop_path_rate: float | None = None) -> nn.Module:
    """A preset's backbone as a timm ``VisionTransformer`` (:class:`adapters.convert.FoundationViT`) whose
    output with ``num_classes=0`` is the authors' embedding; ``num_classes > 0`` adds a fresh head.

    ``init_checkpoint``: a local copy of the repo (a folder; for ``mae`` presets the ``.pth`` itself).
    ``pretrained=False``: random weights (drawn from a fixed seed) on the architecture of the local copy's
    config, or of the preset when there is none; nothing is read or downloaded but configs.
    """
    preset = find_preset(name)
    if preset is None:
        raise BackboneError(f"unknown foundation preset {name!r}")
    folder = None
    if init_checkpoint:
        folder = local_repo(preset, init_checkpoint)
    elif pretrained:
        if preset.hub_id is None:
            raise BackboneError(f"{preset.name} has no Hub repo: {preset.get}")
        folder = fetch_repo(preset)
    config = repo_config(preset, folder)
    spec = spec_from_config(preset.source, config, preset.pooling, preset.timm_args)
    if drop_path_rate is not None:
        spec["args"]["drop_path_rate"] = drop_path_rate
    dc = data_cfg(preset, folder, config, img_size)
    with torch.random.fork_rng(devices=[]):  # random weights from a fixed seed, as adapters.backbones
        torch.manual_seed(RANDOM_INIT_SEED)
        size = img_size if spec.get("native_size") else dc["size"]  # open_clip trunks: timm's default unless asked
        model = build(spec, size, init=not (pretrained and folder is not None and preset.source != "mae"))
    report = None
    if pretrained and folder is not None:
        report = _load(model, preset, spec, folder)
    model.reset_classifier(num_classes)
    model.pretrained_cfg = {"input_size": (3, dc["size"], dc["size"]), "mean": tuple(dc["mean"]),
                            "std": tuple(dc["std"]), "interpolation": dc["interpolation"],
                            "crop_pct": dc["crop_pct"], "crop_mode": "center", "first_conv": "patch_embed.proj",
                            "classifier": "head", "num_classes": num_classes, "hf_hub_id": preset.hub_id,
                            "license": preset.license, "architecture": preset.name, "tag": "medpeft"}
    model.medpeft_preset = preset.name
    model.medpeft_init_report = report
    return model


def _load(model: FoundationViT, preset: Preset, spec: dict[str, Any], folder: Path):
    paths = weight_paths(preset, folder)
    if preset.source == "mae":  # MAE fine-tuning's loader: decoder dropped, pos_embed interpolated, reported
        from .checkpoints import load_init_checkpoint

        return load_init_checkpoint(model, paths[0])
    state = converted_state(preset, spec, paths)
    if preset.source == "timm":
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, model)  # timm's own loading (resamples pos_embed as timm does)
    else:
        resample_pos_embed(model, state, spec["antialias"])
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and not k.startswith("head."))
    extra = sorted(k for k in state if k not in own)
    if missing or extra:
        raise ConversionError(f"{preset.name}: the weights in {folder} do not fit the architecture of its config: "
                              f"{len(missing)} missing {missing[:4]}, {len(extra)} unexpected {extra[:4]}")
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        k, got, want = wrong[0]
        raise ConversionError(f"{preset.name}: {len(wrong)} tensor(s) of the wrong shape, e.g. {k} is {got}, the "
                              f"config's architecture has {want}")
    model.load_state_dict(state, strict=False)
    return None
