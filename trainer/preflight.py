"""Checks a run makes before it writes anything, each failing in seconds with a typed error that says
what works instead: local inputs first (the data folder), then every place it writes (the run folder,
the image cache, the Hub cache where weights will be downloaded; HPO adds its study storage), then the backbone (a name timm knows, with
close names when it does not), the method on that backbone (applied to a weightless copy on the
``meta`` device), and pretrained weights that would come from the Hugging Face Hub.

The Hub is asked once per process (a TCP connection with a 3 s timeout; ``HF_HUB_OFFLINE=1`` means
"do not ask"), instead of timm / diffusers retrying downloads for minutes.
"""
from __future__ import annotations

import difflib
import errno
import math
import os
import re
import socket
import tempfile
import time
from pathlib import Path

from adapters import OFFLINE_LITE0, BackboneError

from .config import ConfigError, TrainConfig

OFFLINE_HINT = (f"offline, use --backbone {OFFLINE_LITE0} (ImageNet weights installed with pip), "
                "--init-checkpoint FILE (your own weights) or --no-pretrained (random weights, for tests)")
HUB_TIMEOUT_S = 3.0
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_HUB_CHECK: dict[str, tuple[float, bool]] = {}


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set (read now, not at import time as huggingface_hub does)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return env in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = HUB_TIMEOUT_S, ttl: float = 60.0) -> bool:
    """Whether the Hub endpoint (``HF_ENDPOINT``) accepts a TCP connection; False when offline mode is
    on. The answer is kept for ``ttl`` seconds."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if hub_offline():
        return False
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


def _why_no_hub() -> str:
    return ("HF_HUB_OFFLINE is set" if hub_offline()
            else f"the Hub is not reachable from this machine (no answer within {HUB_TIMEOUT_S:g} s)")


def hub_cached(repo_id: str, filenames=HUB_WEIGHT_FILES) -> bool:
    """One of ``filenames`` of ``repo_id`` is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(repo_id, n), str) for n in filenames if n)
    except Exception:  # an invalid repo id: not cached
        return False


def close_backbones(name: str, n: int = 5) -> list[str]:
    """timm names (with and without pretrained tags) closest to ``name``."""
    import timm

    arch = name.split(".")[0]
    names = difflib.get_close_matches(arch, timm.list_models(), n=n, cutoff=0.6)
    if "." in name:
        names = difflib.get_close_matches(name, timm.list_models(pretrained=True), n=n, cutoff=0.6) or names
    return names


def check_backbone(name: str, pretrained: bool = True, init_checkpoint: str | None = None) -> None:
    """BackboneError unless timm (or MedPEFT) knows ``name`` and, with ``pretrained`` and no
    ``init_checkpoint``, its weights are cached or the Hub answers."""
    import timm
    from timm.models import get_pretrained_cfg

    if name == OFFLINE_LITE0:
        return
    from adapters.foundation import find_preset

    preset = find_preset(name)
    if preset is not None:  # a foundation preset (python -m adapters backbones)
        if pretrained and not init_checkpoint and preset.hub_id is None:
            raise BackboneError(f"{preset.name} has no Hub repo: {preset.get}")
        if not pretrained or init_checkpoint or hub_cached(preset.hub_id, ("config.json", "open_clip_config.json",
                                                                           preset.weights_file or "config.json")):
            return
        if not hub_reachable():
            raise BackboneError(f"backbone {name!r} needs its Hub repo {preset.hub_id}, but {_why_no_hub()} and it "
                                f"is not in the local cache; pass --init-checkpoint DIR with a local copy of the repo")
        return
    files = HUB_WEIGHT_FILES
    if name.startswith(("hf-hub:", "hf_hub:")):
        hub_id = name.split(":", 1)[1]
    else:
        if not timm.is_model(name):
            close = close_backbones(name)
            hint = f"close timm names: {', '.join(close)}" if close else "see timm.list_models()"
            raise BackboneError(f"unknown backbone {name!r}; {hint} (offline: {OFFLINE_LITE0})")
        try:
            pcfg = get_pretrained_cfg(name)
        except RuntimeError:  # a known architecture with an unknown pretrained tag
            tags = timm.list_models(name.split(".")[0], pretrained=True)[:8]
            raise BackboneError(f"backbone {name!r}: timm has no pretrained weights tagged {name.partition('.')[2]!r}"
                                + (f"; it has {', '.join(tags)}" if tags else "")) from None
        hub_id = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
        if pcfg is not None and getattr(pcfg, "hf_hub_filename", None):
            files = (pcfg.hf_hub_filename,) + files
    if not pretrained or init_checkpoint or hub_id is None or hub_cached(hub_id, files):
        return  # no Hub weights needed (or none exist: MedPEFT's tiny test models), or they are cached
    if not hub_reachable():
        raise BackboneError(f"backbone {name!r} needs pretrained weights from the Hugging Face Hub ({hub_id}), "
                            f"but {_why_no_hub()} and they are not in the local cache; {OFFLINE_HINT}")
    check_hub_cache()  # they will be downloaded into it


def check_model(cfg: TrainConfig, num_classes: int = 2) -> None:
    """Build the backbone without weights (``meta`` device) and apply the method: a method that does not
    fit the backbone, or a hyper-parameter value the method refuses, fails here (MethodError /
    BackboneError), not after the run folder was made."""
    import torch

    from adapters import MethodError, apply_method, create_backbone

    with torch.device("meta"):
        model = create_backbone(cfg.resolved_backbone(), num_classes, pretrained=False, img_size=cfg.img_size)
        try:
            apply_method(model, cfg.method, **cfg.hparams)
        except MethodError:
            raise
        except (ValueError, TypeError, KeyError) as e:  # a method's own check of a value (peft, timm)
            raise MethodError(f"method {cfg.method!r} refused its hyper-parameters {cfg.hparams}: {e}") from None


def check_data_dir(cfg: TrainConfig) -> Path:
    from .data import DataError

    if not cfg.data_dir:
        raise DataError(f"--data-dir is required: the folder of dataset {cfg.dataset!r} as downloaded")
    path = Path(cfg.data_dir).expanduser()
    if not path.exists():
        raise DataError(f"--data-dir {cfg.data_dir} does not exist")
    if not path.is_dir():
        raise DataError(f"--data-dir {cfg.data_dir} is a file; give the dataset's folder")
    return path


def check_base_model(base_model: str | None) -> None:
    """A generation base model is a local pipeline folder, or a Hub id that is cached or reachable."""
    from .diffusion import BASE_HINT, GenerationError, check_base

    base = check_base(base_model)
    if Path(base).is_dir() or hub_cached(base, ("model_index.json", "unet/config.json")):
        return
    if not hub_reachable():
        raise GenerationError(f"base model {base!r} is a Hub id, but {_why_no_hub()} and it is not in the local "
                              f"cache; {BASE_HINT}")
    check_hub_cache()


def preflight(cfg: TrainConfig) -> TrainConfig:
    """Validate ``cfg`` and check its inputs, cheapest and most local first; nothing is written."""
    cfg.validate()
    check_data_dir(cfg)
    check_outputs(cfg)
    if cfg.task == "generation":
        check_base_model(cfg.base_model)
        return cfg
    check_backbone(cfg.resolved_backbone(), cfg.pretrained, getattr(cfg, "init_checkpoint", None))
    check_model(cfg)
    return cfg


# ------------------------------------------------------------------------------------ where a run writes
class StorageError(ConfigError):
    """A place a run must write to cannot be written: the message names it, the reason and the flag."""


ERRNO_HINTS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
               errno.EDQUOT: "disk quota exceeded", errno.ENOENT: "no such file or folder",
               errno.ENOTDIR: "a path component is a file, not a folder", errno.EISDIR: "is a folder",
               errno.ENAMETOOLONG: "file name too long", errno.EIO: "input/output error"}
_RUST_OS_ERROR = re.compile(r"Os \{ code: (\d+)")
SQLITE_FAULTS = {"database or disk is full": errno.ENOSPC, "attempt to write a readonly database": errno.EROFS,
                 "unable to open database file": errno.EACCES}


def storage_errno(exc: BaseException) -> int | None:
    """The errno of a failed write, also where a library wraps it: safetensors' Rust ``IoError`` and
    torch.save's ``file write failed`` RuntimeError; None when ``exc`` is not a filesystem fault."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    text = str(exc)
    found = _RUST_OS_ERROR.search(text)
    if found:
        return int(found.group(1))
    if isinstance(exc, RuntimeError) and ("file write failed" in text or "unexpected pos" in text):
        return errno.EIO
    for phrase, code in SQLITE_FAULTS.items():  # optuna's SQLite storage, through SQLAlchemy
        if phrase in text:
            return code
    return None


def describe_storage_error(exc: BaseException) -> str | None:
    """One line for a filesystem fault (``None`` if ``exc`` is not one): what failed, where, and why."""
    code = storage_errno(exc)
    if code is None:
        return None
    where = getattr(exc, "filename", None)
    why = ERRNO_HINTS.get(code) or os.strerror(code)
    name = errno.errorcode.get(code, str(code))
    hint = " Free some space (or point MEDPEFT_CACHE_DIR / --output-dir elsewhere) and run again; --resume " \
           "continues from the last finished epoch." if code in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"could not write{f' {where}' if where else ''}: {why} ({name}).{hint}"


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """``path`` (a folder, made later if missing) can be written: the folder itself if it exists, else its
    nearest existing parent, which must be a folder where a file can be created (tried with a temporary
    file, removed at once: a read-only mount, a full disk's refusal or a permission is seen as it is).
    Raises :class:`StorageError` naming ``what`` (e.g. "--output-dir"); nothing is left behind."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise StorageError(f"{what} {path}: {probe} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".medpeft-write-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        why = ("files cannot be created there (a virtual or read-only file system)" if e.errno == errno.ENOENT
               else ERRNO_HINTS.get(e.errno, e.strerror or str(e)))
        where = "" if probe == path else f" (its nearest existing folder {probe})"
        raise StorageError(f"{what} {path} cannot be written{where}: {why}; choose a folder you can write "
                           f"to") from None
    return path


def check_outputs(cfg: TrainConfig) -> None:
    """Every place the run writes, before it writes: the run folder, the image cache (and, where weights
    come from the Hub and are not cached, the Hub cache)."""
    from .data.cache import image_cache_dir

    check_writable(cfg.output_dir, "--output-dir")
    check_writable(image_cache_dir(cfg.cache_dir), "the image cache (--cache-dir / MEDPEFT_CACHE_DIR)")


def check_hub_cache() -> None:
    from huggingface_hub import constants

    check_writable(constants.HF_HUB_CACHE, "the Hugging Face cache (HF_HUB_CACHE / HF_HOME)")


def check_storage_url(url: str | None, what: str = "--storage") -> None:
    """An SQLite study file's folder must be writable; server databases (PostgreSQL, ...) are reached later."""
    if url and url.startswith("sqlite:///"):
        file = Path(url[len("sqlite:///"):])
        check_writable(file.parent, f"{what} ({file.name})")


def check_number(flag_name: str, value, lo: float, hi: float | None = None, integer: bool = True) -> None:
    """A numeric command-line option within [lo, hi], as the trainer's own options are checked."""
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else \
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or (hi is not None and value > hi):
        bound = f"of at least {lo:g}" if hi is None else f"in [{lo:g}, {hi:g}]"
        raise ConfigError(f"{flag_name} must be {kind} {bound}, got {value!r}")


__all__ = ["ConfigError", "OFFLINE_HINT", "StorageError", "check_backbone", "check_base_model", "check_data_dir",
           "check_hub_cache", "check_model", "check_number", "check_outputs", "check_storage_url", "check_writable",
           "close_backbones", "describe_storage_error", "hub_cached", "hub_offline", "hub_reachable", "preflight",
           "storage_errno"]
