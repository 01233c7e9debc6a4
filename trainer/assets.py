"""Real assets that ship inside registry packages, located without importing those packages
(open_clip's BPE vocabulary, NVIDIA's FID Inception TorchScript, the IU chest X-ray reports)."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def package_file(package: str, relative: str, install: str, min_bytes: int = 1,
                 error: type[Exception] = RuntimeError) -> Path:
    """``<package folder>/<relative>``; ``error`` with an actionable message (``install`` is the pip
    command) when the package or the file is missing or truncated."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"{relative} ships in the {package} package: {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file() or path.stat().st_size < min_bytes:
        raise error(f"{path} is missing or truncated: reinstall it ({install})")
    return path
