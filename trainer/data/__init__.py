"""MedPEFT classification data layer.

    index = load_dataset("ham10000", "/data/ham10000")           # DatasetIndex
    cache = build_image_cache(index, "~/.cache/medpeft", 256)      # decode once, reuse later
    index = cache.index                                            # minus skipped bad images
    splits = make_splits(index, seed=0)                            # grouped + stratified
    train = CachedImageDataset(cache, index.labels, splits["train"], build_transforms(cfg, train=True))

Every user-facing problem (missing files, unknown labels, unreadable images) is a DataError.
"""
from .cache import CachedImageDataset, ImageCache, build_image_cache
from .datasets import DATASETS, dataset_parameters, load_dataset, read_nih_labels, read_rsna_labels
from .dicom import is_dicom, read_dicom
from .errors import DataError
from .images import MAX_PIXELS, load_image
from .index import DatasetIndex
from .splits import load_splits, make_splits, save_splits
from .transforms import build_transforms, transforms_for

__all__ = ["DataError", "DatasetIndex", "DATASETS", "dataset_parameters", "load_dataset", "load_image", "read_dicom", "is_dicom",
           "make_splits", "save_splits", "load_splits", "build_image_cache", "ImageCache",
           "CachedImageDataset", "build_transforms", "transforms_for", "read_nih_labels", "read_rsna_labels", "MAX_PIXELS"]
