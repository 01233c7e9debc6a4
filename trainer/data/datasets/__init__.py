"""Dataset loaders by name: each reads a dataset's real download layout into a DatasetIndex."""
from __future__ import annotations

import inspect
from typing import Callable

from ..errors import DataError
from ..index import DatasetIndex
from .breastus import load_breastus
from .chestxray14 import load_chestxray14, read_nih_labels
from .chexpert import load_chexpert, read_chexpert_labels
from .fitzpatrick17k import load_fitzpatrick17k
from .generic import load_csv, load_imagefolder
from .ham10000 import load_ham10000
from .rsna_pneumonia import load_rsna_pneumonia, read_rsna_labels
from .smdg import load_smdg

DATASETS: dict[str, Callable[..., DatasetIndex]] = {
    "ham10000": load_ham10000,
    "breastus": load_breastus,
    "fitzpatrick17k": load_fitzpatrick17k,
    "smdg": load_smdg,
    "rsna_pneumonia": load_rsna_pneumonia,
    "chestxray14": load_chestxray14,
    "chexpert": load_chexpert,
    "imagefolder": load_imagefolder,
    "csv": load_csv,
}


def dataset_parameters(name: str) -> list[str]:
    """The options dataset `name`'s loader accepts (besides data_dir); [] for an unknown name."""
    loader = DATASETS.get(str(name).lower())
    return [p for p in inspect.signature(loader).parameters if p != "data_dir"] if loader else []


def load_dataset(name: str, data_dir, **options) -> DatasetIndex:
    """Load dataset `name` (a key of DATASETS) from data_dir with its loader's options."""
    loader = DATASETS.get(str(name).lower())
    if loader is None:
        raise DataError(f"Unknown dataset {name!r}; expected one of {sorted(DATASETS)}.")
    accepted = [p for p in inspect.signature(loader).parameters if p != "data_dir"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(f"Unknown option(s) {unknown} for dataset {name!r}; accepted: {accepted or 'none'}.")
    return loader(data_dir, **options)


__all__ = ["DATASETS", "dataset_parameters", "load_dataset", "read_nih_labels", "read_rsna_labels", "load_ham10000", "load_breastus",
           "load_fitzpatrick17k", "load_smdg", "load_rsna_pneumonia", "load_chestxray14", "load_chexpert",
           "read_chexpert_labels", "load_imagefolder", "load_csv"]
