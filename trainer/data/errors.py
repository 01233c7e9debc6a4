"""The one user-facing error of the data layer, and helpers to make its messages useful."""
from __future__ import annotations

import os
from pathlib import Path


class DataError(ValueError):
    """A dataset, image or split is not what was expected.

    Messages say what was expected and what was found, so a user can fix their files.
    """


def describe_dir(path: str | os.PathLike, limit: int = 12) -> str:
    """The first few entries of a folder, for an error message ("a/, b.csv, ... (40 entries)")."""
    path = Path(path)
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    try:
        entries = sorted(path.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        return f"{path} cannot be listed ({exc})"
    if not entries:
        return f"{path} is empty"
    names = [e.name + ("/" if e.is_dir() else "") for e in entries[:limit]]
    more = f", ... ({len(entries)} entries)" if len(entries) > limit else ""
    return f"{path} contains: " + ", ".join(names) + more


def layout_error(problem: str, expected: str, data_dir: str | os.PathLike) -> DataError:
    """A DataError that states the problem, the expected layout and what data_dir holds."""
    return DataError(f"{problem}\nExpected layout:\n{expected.rstrip()}\nFound: {describe_dir(data_dir)}")


def short_list(items, limit: int = 10) -> str:
    """At most `limit` items, comma separated, with a count of the rest."""
    items = [str(i) for i in items]
    text = ", ".join(items[:limit])
    if len(items) > limit:
        text += f", ... ({len(items) - limit} more)"
    return text
