"""BUSI, Breast Ultrasound Images (Al-Dhabyani et al. 2020): benign / malignant / normal.

Each class folder holds the images and, beside them, their segmentation masks
("benign (1)_mask.png", "benign (1)_mask_1.png"), which are not images to classify.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import layout_error
from ..images import IMAGE_EXTENSIONS
from ..index import DatasetIndex
from ..scan import require_dir, walk_files
from .common import single_label_index

CLASSES = ["benign", "malignant", "normal"]
EXPECTED = """data_dir/
  Dataset_BUSI_with_GT/            (or the class folders directly in data_dir)
    benign/benign (1).png, benign (1)_mask.png, ...
    malignant/malignant (1).png, malignant (1)_mask.png, ...
    normal/normal (1).png, normal (1)_mask.png, ..."""
_MASK = re.compile(r"_mask(_\d+)?$", re.IGNORECASE)


def is_mask(path: str | Path) -> bool:
    """True for BUSI segmentation masks ('x_mask.png', 'x_mask_1.png')."""
    return bool(_MASK.search(Path(path).stem))


def _find_class_root(root: Path) -> Path | None:
    """The shallowest folder (root included) that holds benign/, malignant/ and normal/."""
    candidates = [root] + sorted((p for p in root.rglob("*") if p.is_dir()),
                                 key=lambda p: (len(p.parts), str(p)))
    for folder in candidates:
        names = {c.name.lower() for c in folder.iterdir() if c.is_dir()}
        if set(CLASSES) <= names:
            return folder
    return None


def load_breastus(data_dir) -> DatasetIndex:
    """BUSI from Dataset_BUSI_with_GT/{benign,malignant,normal}/, masks excluded. No patient ids."""
    root = require_dir(data_dir, EXPECTED)
    class_root = _find_class_root(root)
    if class_root is None:
        raise layout_error(f"No folder with benign/, malignant/ and normal/ subfolders under {root}.",
                           EXPECTED, root)
    folders = {c.name.lower(): c for c in class_root.iterdir() if c.is_dir()}
    paths, labels, masks = [], [], 0
    for cls in CLASSES:
        for f in walk_files(folders[cls]):
            if not f.name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            if is_mask(f):
                masks += 1
                continue
            paths.append(str(f))
            labels.append(cls)
    empty = [c for c in CLASSES if c not in labels]
    if empty:
        raise layout_error(f"BUSI class folder(s) {empty} under {class_root} hold no images "
                           f"(masks are not counted).", EXPECTED, class_root)
    notes = [f"{masks} segmentation masks ignored"] if masks else []
    return single_label_index("breastus", root, paths, labels, CLASSES, notes=notes)
