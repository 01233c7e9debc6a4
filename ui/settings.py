"""Every setting the app takes from the environment, read once (:meth:`Settings.from_env`); the rest
of the app and the library get them as arguments.

- ``MEDPEFT_ADAPTERS_DIR``: the folder scanned for adapters and results.json (default ``runs``)
- ``MEDPEFT_HUB_ADAPTERS``: comma-separated Hub repo ids of adapters to list
- ``MEDPEFT_SD_BASE``: the Stable Diffusion pipeline pre-filled on the Generate tab (Hub id or folder)
- ``MEDPEFT_RESULTS_DIRS``: extra folders of results.json for the leaderboard (os.pathsep-separated)
- ``MEDPEFT_DATA_ROOTS``: the folders the Train tab may read registered datasets from
  (os.pathsep-separated; unset: any folder; set it on a public server)
- ``MEDPEFT_SERVE_MEMORY_MB``: memory for merged copies of adapters (default 0: none; every adapter is
  served unmerged on one shared frozen base per backbone, see ``trainer.infer.serving``)
- ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``: host and port (``python app.py`` defaults)
- ``HF_ENDPOINT`` (through huggingface_hub) and ``HF_TOKEN`` are read by the Hub client itself.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """The environment's settings; ``overrides`` that are not None win (``build_app``'s arguments)."""
        env = os.environ if environ is None else environ

        def split(name: str, sep: str) -> tuple[str, ...]:
            return tuple(p.strip() for p in env.get(name, "").split(sep) if p.strip())

        values = dict(adapters_dir=Path(env.get("MEDPEFT_ADAPTERS_DIR") or "runs"),
                      hub_repos=split("MEDPEFT_HUB_ADAPTERS", ","), sd_base=env.get("MEDPEFT_SD_BASE", ""),
                      results_dirs=split("MEDPEFT_RESULTS_DIRS", os.pathsep),
                      data_roots=split("MEDPEFT_DATA_ROOTS", os.pathsep),
                      host=env.get("GRADIO_SERVER_NAME") or "127.0.0.1",
                      port=int(env.get("GRADIO_SERVER_PORT") or 7860),
                      serve_memory_mb=_nonnegative(env.get("MEDPEFT_SERVE_MEMORY_MB"), "MEDPEFT_SERVE_MEMORY_MB"))
        values.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("adapters_dir", "examples_dir", "train_dir"):
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
