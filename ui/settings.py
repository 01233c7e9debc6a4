"""Every setting the app takes from the environment, read once (:meth:`Settings.from_env`); the rest
of the app and the library get them as arguments.

- ``MEDPEFT_ADAPTERS_DIR``: the folder scanned for adapters and results.json (default ``runs``)
- ``MEDPEFT_HUB_ADAPTERS``: comma-separated Hub repo ids of adapters to list
- ``MEDPEFT_SD_BASE``: the Stable Diffusion pipeline pre-filled on the Generate tab (Hub id or folder)
- ``MEDPEFT_RESULTS_DIRS``: extra folders of results.json for the leaderboard (os.pathsep-separated)
- ``MEDPEFT_DATA_ROOTS``: the folders the Train tab may read registered datasets from
  (os.pathsep-separated; unset: any folder in local mode, none (uploads only) in public mode)
- ``MEDPEFT_PUBLIC``: ``1`` forces public mode, ``0`` forces local mode (default: public on a Space,
  i.e. ``SPACE_ID`` set, or when listening on a non-loopback address)
- ``MEDPEFT_PRIVATE_DIR``: where visitors' uploads, runs and adapters live in public mode (default a
  new temporary folder); ``MEDPEFT_PRIVATE_TTL``: seconds they are kept (default 86400)
- ``MEDPEFT_CACHE_TTL``: seconds Gradio's temporary files are kept (default 3600)
- ``MEDPEFT_STATE_CAPACITY``: how many recent sessions keep Gradio state (default 1000)
- ``MEDPEFT_GPU_MAX_S``: the longest GPU call ZeroGPU grants (default 120 s; longer Train jobs are refused)
- ``SPACE_ID`` (set by Hugging Face Spaces), ``OAUTH_CLIENT_ID`` (set where the Space has ``hf_oauth: true``)
- ``MEDPEFT_SERVE_MEMORY_MB``: memory for merged copies of adapters (default 0: none; every adapter is
  served unmerged on one shared frozen base per backbone, see ``trainer.infer.serving``)
- ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``: host and port (``python app.py`` defaults)
- ``HF_ENDPOINT`` (through huggingface_hub) and ``HF_TOKEN`` are read by the Hub client itself.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; False for 0.0.0.0 and any other address or name."""
    host = (host or "").strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _flag(value: str | None) -> bool | None:
    if value is None or not value.strip():
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


def _can_sign_in() -> bool:
    """Gradio's "Sign in with Hugging Face" needs ``itsdangerous`` (in the Space's requirements)."""
    import importlib.util

    return importlib.util.find_spec("itsdangerous") is not None


@dataclass(frozen=True)
class Settings:
    adapters_dir: Path = Path("runs")
    hub_repos: tuple[str, ...] = ()
    sd_base: str = ""
    results_dirs: tuple[str, ...] = ()
    data_roots: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 7860
    hub_endpoint: str | None = None  # a Hub other than huggingface.co (tests: a local fake Hub)
    examples_dir: Path | None = None  # default: <tmp>/medpeft-app-examples
    train_dir: Path | None = None  # the Train tab's scratch folder; default a new temporary folder
    create_demo: bool = True  # write an ImageNet demo adapter when no adapter is found
    serve_memory_mb: float = 0.0  # merged adapter copies kept within this many MB (0: none)
    public: bool | None = None  # None: decided by space_id and host (see ``is_public``)
    space_id: str = ""
    oauth: bool = False  # the Space offers "Sign in with Hugging Face" (hf_oauth: true)
    private_dir: Path | None = None
    private_ttl: float = 86400.0
    cache_ttl: float = 3600.0
    state_capacity: int = 1000
    gpu_max_s: int = 120

    @property
    def is_public(self) -> bool:
        """Public mode: on a Space, listening on a non-loopback address, or asked for (--public)."""
        if self.public is not None:
            return bool(self.public)
        return bool(self.space_id) or not is_loopback(self.host)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """The environment's settings; ``overrides`` that are not None win (``build_app``'s arguments)."""
        env = os.environ if environ is None else environ

        def split(name: str, sep: str) -> tuple[str, ...]:
            return tuple(p.strip() for p in env.get(name, "").split(sep) if p.strip())

        def number(name: str, default: float, kind=float):
            raw = (env.get(name) or "").strip()
            try:
                return kind(float(raw)) if raw else default
            except ValueError:
                raise SystemExit(f"{name} must be a number of seconds, not {raw!r}") from None

        values = dict(adapters_dir=Path(env.get("MEDPEFT_ADAPTERS_DIR") or "runs"),
                      hub_repos=split("MEDPEFT_HUB_ADAPTERS", ","), sd_base=env.get("MEDPEFT_SD_BASE", ""),
                      results_dirs=split("MEDPEFT_RESULTS_DIRS", os.pathsep),
                      data_roots=split("MEDPEFT_DATA_ROOTS", os.pathsep),
                      host=env.get("GRADIO_SERVER_NAME") or "127.0.0.1",
                      port=int(env.get("GRADIO_SERVER_PORT") or 7860),
                      serve_memory_mb=_nonnegative(env.get("MEDPEFT_SERVE_MEMORY_MB"), "MEDPEFT_SERVE_MEMORY_MB"),
                      public=_flag(env.get("MEDPEFT_PUBLIC")), space_id=(env.get("SPACE_ID") or "").strip(),
                      oauth=bool((env.get("OAUTH_CLIENT_ID") or "").strip()) and _can_sign_in(),
                      private_dir=env.get("MEDPEFT_PRIVATE_DIR") or None,
                      private_ttl=number("MEDPEFT_PRIVATE_TTL", 86400.0),
                      cache_ttl=number("MEDPEFT_CACHE_TTL", 3600.0),
                      state_capacity=number("MEDPEFT_STATE_CAPACITY", 1000, int),
                      gpu_max_s=number("MEDPEFT_GPU_MAX_S", 120, int))
        values.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("adapters_dir", "examples_dir", "train_dir", "private_dir"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        for key in ("hub_repos", "results_dirs", "data_roots"):
            values[key] = tuple(str(v) for v in values[key])
        return cls(**values)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


def _nonnegative(value: str | None, name: str) -> float:
    if not (value or "").strip():
        return 0.0
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of megabytes, not {value!r}") from None
    if v < 0 or v != v:
        raise ValueError(f"{name} must be >= 0, not {value!r}")
    return v
