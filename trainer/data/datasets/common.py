"""Shared pieces of the dataset loaders: reading label tables and matching rows to image files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, short_list
from ..index import DatasetIndex
from ..scan import missing_note


def read_table(path: Path, required: list[str], expected: str, **kwargs) -> pd.DataFrame:
    """Read a CSV (plain or compressed); DataError if it cannot be parsed or lacks `required` columns."""
    try:
        df = pd.read_csv(path, **kwargs)
    except Exception as exc:
        raise DataError(f"{path} could not be read as CSV ({type(exc).__name__}: {exc}).\n"
                        f"Expected layout:\n{expected}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}.\nExpected columns: {required}\n"
                        f"Found columns: {list(df.columns)}")
    return df


def check_labels(values, allowed, source) -> None:
    """DataError listing label values that are not among `allowed`."""
    allowed_set = set(allowed)
    unknown = sorted({str(v) for v in values if v not in allowed_set})
    if unknown:
        raise DataError(f"{source}: unknown class label(s) {short_list(unknown)}.\n"
                        f"Expected one of: {list(allowed)}")


def match_images(name: str, root: Path, stems: list[str], images: dict[str, str], expected: str,
                 what: str = "rows") -> tuple[np.ndarray, list[str], list[str]]:
    """Find each stem's image file.

    Returns (positions of the rows whose image exists, their paths, notes). Missing images are
    not fatal (a partial download still trains) and are counted in the notes; DataError if no
    row has an image.
    """
    keep, paths, missing = [], [], []
    for i, stem in enumerate(stems):
        path = images.get(stem)
        if path is None:
            missing.append(stem)
        else:
            keep.append(i)
            paths.append(path)
    if not keep:
        found = short_list(sorted(images)[:5], 5) if images else "no image files at all"
        raise DataError(f"{name}: none of the {len(stems)} {what} of the label table has its image "
                        f"under {root} (looked for e.g. {short_list(stems[:3], 3)}; found {found}).\n"
                        f"Expected layout:\n{expected}")
    notes = [missing_note(len(missing), len(stems), what, missing)] if missing else []
    return np.asarray(keep, dtype=np.int64), paths, notes


def single_label_index(name: str, root: Path, paths: list[str], label_names: list[str],
                       class_names: list[str], groups=None, notes=None,
                       official_test=None, subgroups=None) -> DatasetIndex:
    """DatasetIndex from per-image class names (already validated)."""
    lookup = {c: i for i, c in enumerate(class_names)}
    labels = np.asarray([lookup[v] for v in label_names], dtype=np.int64)
    return DatasetIndex(name=name, paths=paths, labels=labels, class_names=list(class_names),
                        multilabel=False, groups=groups, official_test=official_test,
                        subgroups=dict(subgroups or {}), notes=list(notes or []), root=str(root))
