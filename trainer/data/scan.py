"""Finding dataset files in real downloads, which nest folders differently (Kaggle vs. the source)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

from .errors import DataError, layout_error
from .images import IMAGE_EXTENSIONS


def require_dir(data_dir, expected: str) -> Path:
    """data_dir as an absolute Path; DataError (with the expected layout) if it is not a folder."""
    if data_dir is None:
        raise DataError(f"No data_dir given.\nExpected layout:\n{expected}")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a folder"
        raise layout_error(f"data_dir {path} {what}.", expected, path.parent if path.parent.is_dir() else path)
    return path.resolve()


def walk_files(root, keep_dir: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """All files below root, in a deterministic (sorted) order; hidden entries skipped.

    Follows symlinked folders (data folders are often links) but never visits one twice.
    """
    root = Path(root)
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if keep_dir is not None and not keep_dir(here):
            continue
        for f in sorted(filenames):
            if not f.startswith("."):
                yield here / f


def index_files_by_stem(root, extensions=IMAGE_EXTENSIONS, keep_dir=None,
                        keep_name: Callable[[str], bool] | None = None) -> dict[str, str]:
    """Map file stem -> absolute path for files with the given extensions below root.

    Duplicate stems (e.g. the Kaggle HAM10000 copy ships every image twice) keep the first in
    sorted order, so the result is deterministic.
    """
    extensions = tuple(e.lower() for e in extensions)
    found: dict[str, str] = {}
    for path in walk_files(root, keep_dir):
        name = path.name
        if not name.lower().endswith(extensions):
            continue
        if keep_name is not None and not keep_name(name):
            continue
        found.setdefault(path.stem, str(path))
    return found


def find_file(root, names, expected: str, data_dir=None) -> Path:
    """The shallowest file below root whose name is one of `names` (case-insensitive).

    Names earlier in the list win over later ones at the same depth.
    """
    wanted = [n.lower() for n in names]
    top = {p.name.lower(): p for p in Path(root).iterdir() if p.is_file()}
    for name in wanted:  # fast path: the file sits in root itself (no walk of a large image tree)
        if name in top:
            return top[name]
    best: tuple[int, int, str] | None = None
    for path in walk_files(root):
        low = path.name.lower()
        if low in wanted:
            key = (len(path.relative_to(root).parts), wanted.index(low), str(path))
            best = key if best is None or key < best else best
    if best is None:
        raise layout_error(f"None of {', '.join(names)} was found under {root}.", expected, data_dir or root)
    return Path(best[2])


def missing_note(n_missing: int, n_total: int, what: str, examples) -> str:
    """A note such as '312 of 16577 rows skipped: image missing (e.g. abc.jpg, ...)'."""
    ex = ", ".join(list(examples)[:3])
    return f"{n_missing} of {n_total} {what} skipped: image missing (e.g. {ex})"
