"""Image/report pairs for text-to-image fine-tuning (Dutt et al. 2024, Section 4.3).

Datasets (``--dataset``):

``mimic_cxr``  MIMIC-CXR-JPG (PhysioNet) with the free-text reports. Paper protocol: frontal views
               only (ViewPosition PA or AP), prompt = the report's IMPRESSION (its FINDINGS when there
               is no impression), reports of 7 to 77 CLIP tokens (start/end tokens included, i.e. the
               prompt fits the 77-token context untruncated), train on patient groups p10-p18, test on
               p19. ``--fraction`` (or ``--dataset-option n_train=2262``) subsamples the training pairs
               (seeded). Layout::

                   DATA/mimic-cxr-2.0.0-metadata.csv[.gz]        dicom_id, subject_id, study_id, ViewPosition
                   DATA/files/p10/p10000032/s50414267/<dicom_id>.jpg
                   DATA/files/p10/p10000032/s50414267.txt        the report (FINDINGS: / IMPRESSION: ...)
                     or DATA/mimic-cxr-reports/files/p10/p10000032/s50414267.txt
                     or --dataset-option reports_dir=/path/to/mimic-cxr-reports   (holding files/)

``csv``        your own pairs: a CSV file with columns ``path,text`` (paths relative to the CSV's folder
               or absolute) and an optional ``split`` column (train/test; otherwise a seeded
               ``test_frac`` split). ``--data-dir`` is the CSV file, or a folder holding one CSV.

Options (``--dataset-option KEY=VALUE``): ``views`` (default ["PA", "AP"]), ``min_tokens`` / ``max_tokens``
(7 / 77 for mimic_cxr, no filter for csv), ``train_groups`` / ``test_groups`` (mimic_cxr),
``n_train`` (exact number of training pairs), ``val_frac`` (a validation split of whole patients taken from
the training pool, never trained on: what ``--task generation`` searches on and calibrates memorization
with; mimic_cxr's official split uses its ``validate`` part; a csv ``split`` column may say ``val``), ``reports_dir``, ``split`` (mimic_cxr: ``auto`` = the official
``mimic-cxr-2.0.0-split.csv.gz`` when present, else ``p19``; ``official``; ``p19`` = the paper's), ``one_per_study`` (first frontal image of
each study only; default false: every frontal image is a pair).

:func:`parse_report` splits a radiology report into findings/impression; :func:`iu_reports` reads the
3,955 Indiana University chest X-ray reports that ship with torchxrayvision (real report texts for
tests and the app's example prompts).
"""
from __future__ import annotations

import csv
import gzip
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import DataError, describe_dir, layout_error, short_list
from .gen_splits import Pair, hold_out, subsample, train_and_val  # noqa: F401 (Pair, hold_out: public here too)
from .reports import clean_text, parse_report, prompt_of

MIMIC_LAYOUT = """\
DATA/mimic-cxr-2.0.0-metadata.csv (or .csv.gz)   columns dicom_id, subject_id, study_id, ViewPosition
DATA/files/p10/p10000032/s50414267/<dicom_id>.jpg  the images (MIMIC-CXR-JPG)
DATA/files/p10/p10000032/s50414267.txt             the reports, in the same files/ tree,
  or DATA/mimic-cxr-reports/files/p10/...          or a separate reports tree
  (or --dataset-option reports_dir=PATH, a folder holding files/p10/...)"""

CSV_LAYOUT = """\
DATA.csv with a header row: path,text[,split]
  path   image file, relative to the CSV's folder (or absolute)
  text   the report / prompt
  split  optional: train, val or test (default: a seeded random test split)"""

@dataclass
class GenData:
    name: str
    train: list[Pair]
    test: list[Pair]
    notes: list[str] = field(default_factory=list)
    val: list[Pair] = field(default_factory=list)  # validation pairs (never trained on): search and calibration

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "test": len(self.test), **({"val": len(self.val)} if self.val else {})}


def _token_filter(pairs: list[Pair], tokenizer, lo: int | None, hi: int | None, notes: list[str]) -> list[Pair]:
    if tokenizer is None or (lo is None and hi is None):
        return pairs
    ids = tokenizer([p.text for p in pairs], truncation=False, add_special_tokens=True).input_ids if pairs else []
    keep = [p for p, t in zip(pairs, ids) if (lo is None or len(t) >= lo) and (hi is None or len(t) <= hi)]
    if len(keep) < len(pairs):
        notes.append(f"{len(pairs) - len(keep)} of {len(pairs)} pairs dropped: report not {lo}-{hi} CLIP tokens")
    return keep


def _read_csv_table(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def find_mimic_reports_roots(data_dir: Path, reports_dir: str | None = None) -> list[Path]:
    """Folders that may hold ``pNN/pXXXXXXXX/sYYYYYYYY.txt`` (``files/`` trees), most specific first."""
    roots = []
    if reports_dir:
        r = Path(reports_dir).expanduser()
        roots += [r / "files", r]
    roots += [data_dir / "files", data_dir / "mimic-cxr-reports" / "files", data_dir / "mimic-cxr-reports"]
    # beside the image tree: any sibling folder with "report" in its name (e.g. mimic-cxr-reports/files/)
    if data_dir.parent.is_dir():
        for sibling in sorted(data_dir.parent.iterdir()):
            if sibling.is_dir() and "report" in sibling.name.lower() and sibling != data_dir:
                roots += [sibling / "files", sibling]
    return [r for r in dict.fromkeys(roots) if r.is_dir()]


OFFICIAL_SPLIT = ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv")


def _official_split(data_dir: Path) -> dict[str, str] | None:
    """dicom_id -> train | validate | test from MIMIC-CXR-JPG's official split file, when present."""
    path = next((data_dir / n for n in OFFICIAL_SPLIT if (data_dir / n).is_file()), None)
    if path is None:
        return None
    rows = _read_csv_table(path)
    if not rows or {"dicom_id", "split"} - set(rows[0]):
        raise DataError(f"{path.name}: expected columns dicom_id and split (train/validate/test)")
    return {r["dicom_id"].strip(): r["split"].strip().lower() for r in rows}


def load_mimic_cxr(data_dir: str | os.PathLike, tokenizer=None, *, views=("PA", "AP"), min_tokens: int | None = 7,
                   max_tokens: int | None = 77, train_groups=tuple(f"p{i}" for i in range(10, 19)),
                   test_groups=("p19",), reports_dir: str | None = None, one_per_study: bool = False,
                   fraction: float = 1.0, n_train: int | None = None, seed: int = 0,
                   split: str = "auto", val_frac: float | None = None) -> GenData:
    """MIMIC-CXR-JPG image/report pairs. ``split``: ``official`` (the dataset's
    ``mimic-cxr-2.0.0-split.csv.gz``: train + validate to train, test to test), ``p19`` (the paper's
    protocol: patients p10-p18 train, p19 test; ``train_groups``/``test_groups`` change it), or
    ``auto`` (official when the split file is present, else p19)."""
    data_dir = Path(data_dir).expanduser()
    if split not in ("auto", "official", "p19"):
        raise DataError(f"mimic_cxr split must be auto, official or p19, not {split!r}")
    if not data_dir.is_dir():
        raise layout_error(f"MIMIC-CXR folder {data_dir} not found", MIMIC_LAYOUT, data_dir)
    meta = next((data_dir / n for n in ("mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-metadata.csv.gz")
                 if (data_dir / n).is_file()), None)
    if meta is None:
        raise layout_error("mimic-cxr-2.0.0-metadata.csv(.gz) not found", MIMIC_LAYOUT, data_dir)
    rows = _read_csv_table(meta)
    need = {"dicom_id", "subject_id", "study_id", "ViewPosition"}
    if not rows or need - set(rows[0]):
        raise layout_error(f"{meta.name} lacks column(s) {sorted(need - set(rows[0] if rows else ()))}",
                           MIMIC_LAYOUT, data_dir)
    images_root = data_dir / "files"
    if not images_root.is_dir():
        raise layout_error("files/ (the MIMIC-CXR-JPG image tree) not found", MIMIC_LAYOUT, data_dir)
    report_roots = find_mimic_reports_roots(data_dir, reports_dir)
    views = {v.upper() for v in ([views] if isinstance(views, str) else views)}
    official = _official_split(data_dir) if split in ("auto", "official") else None
    if split == "official" and official is None:
        raise layout_error(f"split=official needs {OFFICIAL_SPLIT[0]} in the MIMIC-CXR folder", MIMIC_LAYOUT, data_dir)
    groups = {str(g) for g in train_groups} | {str(g) for g in test_groups}
    notes: list[str] = []
    pairs: list[Pair] = []
    seen_studies: set[str] = set()
    n_view = n_missing_img = n_missing_rep = n_no_text = 0
    report_cache: dict[str, str | None] = {}
    for row in rows:
        if (row.get("ViewPosition") or "").strip().upper() not in views:
            n_view += 1
            continue
        subject, study = str(row["subject_id"]).strip(), str(row["study_id"]).strip()
        folder = group = f"p{subject[:2]}"  # the patient-group folder (p10 ... p19)
        if official is not None:
            part = official.get(row["dicom_id"].strip())
            if part is None:
                continue
            group = {"test": "test", "validate": "validate"}.get(part, "train")
        elif group not in groups:
            continue
        study_key = f"{folder}/p{subject}/s{study}"
        if one_per_study and study_key in seen_studies:
            continue
        img = images_root / folder / f"p{subject}" / f"s{study}" / f"{row['dicom_id'].strip()}.jpg"
        if not img.is_file():
            n_missing_img += 1
            continue
        if study_key not in report_cache:
            rep = next((r / folder / f"p{subject}" / f"s{study}.txt" for r in report_roots
                        if (r / folder / f"p{subject}" / f"s{study}.txt").is_file()), None)
            report_cache[study_key] = prompt_of(parse_report(rep.read_text(errors="replace"))) if rep else None
            if rep is None:
                n_missing_rep += 1
            elif report_cache[study_key] is None:
                n_no_text += 1
        text = report_cache[study_key]
        if not text:
            continue
        seen_studies.add(study_key)
        pairs.append(Pair(str(img), text, group, study_key))
    split_used = "official" if official is not None else "p19"
    notes.append(f"split: {'the official mimic-cxr-2.0.0-split' if official is not None else 'patients ' + short_list(sorted(train_groups)) + ' train, ' + short_list(sorted(test_groups)) + ' test (the paper protocol)'}")
    if n_view:
        notes.append(f"{n_view} non-frontal images skipped (views kept: {', '.join(sorted(views))})")
    if n_missing_img:
        notes.append(f"{n_missing_img} frontal images listed in {meta.name} are not under files/ (skipped)")
    if n_missing_rep:
        notes.append(f"{n_missing_rep} studies have no report .txt (searched: "
                     f"{', '.join(str(r) for r in report_roots) or 'no reports tree found'})")
    if n_no_text:
        notes.append(f"{n_no_text} reports have neither IMPRESSION nor FINDINGS (skipped)")
    if not pairs:
        found = f"report trees searched: {', '.join(str(r) for r in report_roots) or 'none found'}"
        raise layout_error(f"no usable MIMIC-CXR image/report pairs in {data_dir} ({found}; "
                           f"{n_missing_img} frontal images missing)", MIMIC_LAYOUT, data_dir)
    pairs = _token_filter(pairs, tokenizer, min_tokens, max_tokens, notes)
    val: list[Pair] = []
    if split_used == "official":  # the official validate split: the validation pairs, or training ones
        val = [p for p in pairs if p.group == "validate"] if val_frac else []
        train = [p for p in pairs if p.group == "train" or (p.group == "validate" and not val_frac)]
        test = [p for p in pairs if p.group == "test"]
    else:
        train = [p for p in pairs if p.group in {str(g) for g in train_groups}]
        test = [p for p in pairs if p.group in {str(g) for g in test_groups}]
    if not train or not test:
        where = ("the official split file" if split_used == "official" else
                 f"training groups {short_list(sorted(train_groups))}, test groups {short_list(sorted(test_groups))}; "
                 f"a subset without those patients needs e.g. --dataset-option test_groups=p18 "
                 f"(and train_groups=...), or split=official with the official split file")
        raise DataError(f"MIMIC-CXR split is empty: {len(train)} training and {len(test)} test pairs ({where}). "
                        f"{describe_dir(images_root)}")
    if val:
        train = subsample(train, fraction, n_train, seed)
    else:  # p19 protocol: validation patients the training pairs do not include
        train, val = train_and_val(train, fraction, n_train, val_frac, seed)
    if val:
        notes.append(f"validation: {len(val)} pairs of patients never trained on")
    return GenData("mimic_cxr", train, test, notes, val)


def _find_csv(data_dir: Path) -> Path:
    if data_dir.is_file():
        return data_dir
    if data_dir.is_dir():
        cands = sorted(p for p in data_dir.iterdir() if p.suffix.lower() == ".csv")
        if (data_dir / "data.csv").is_file():
            return data_dir / "data.csv"
        if len(cands) == 1:
            return cands[0]
        if len(cands) > 1:
            raise layout_error(f"{data_dir} holds several CSV files ({short_list(c.name for c in cands)}): pass the "
                               "one to use as --data-dir (or name it data.csv)", CSV_LAYOUT, data_dir)
    raise layout_error(f"no CSV of image/report pairs at {data_dir}", CSV_LAYOUT, data_dir)


def load_csv_pairs(data_dir: str | os.PathLike, tokenizer=None, *, min_tokens: int | None = None,
                   max_tokens: int | None = None, test_frac: float = 0.2, fraction: float = 1.0,
                   n_train: int | None = None, seed: int = 0, val_frac: float | None = None) -> GenData:
    path = _find_csv(Path(data_dir).expanduser())
    rows = _read_csv_table(path)
    if not rows or not {"path", "text"} <= set(rows[0]):
        found = ", ".join(rows[0]) if rows else "no rows"
        raise layout_error(f"{path.name} needs the columns path,text (found: {found})", CSV_LAYOUT, path.parent)
    notes: list[str] = []
    pairs, splits, missing = [], [], []
    for i, row in enumerate(rows, start=2):
        text = clean_text(row.get("text") or "")
        if not text:
            notes.append(f"{path.name} line {i}: empty text (skipped)")
            continue
        img = Path(row["path"]).expanduser()
        img = img if img.is_absolute() else path.parent / img
        if not img.is_file():
            missing.append(str(row["path"]))
            continue
        split = (row.get("split") or "").strip().lower()
        split = "val" if split in ("val", "validation", "validate") else split
        if split and split not in ("train", "test", "val"):
            raise DataError(f"{path.name} line {i}: split must be train, val or test, not {split!r}")
        pairs.append(Pair(str(img), text))
        splits.append(split)
    if missing:
        raise DataError(f"{len(missing)} image(s) listed in {path} not found: {short_list(missing, 5)} "
                        f"(paths are relative to {path.parent})")
    keep = _token_filter(pairs, tokenizer, min_tokens, max_tokens, notes)
    keep_ids = {id(p) for p in keep}
    splits = [s for p, s in zip(pairs, splits) if id(p) in keep_ids]
    pairs = keep
    if len(pairs) < 2:
        raise DataError(f"{path} holds {len(pairs)} usable pair(s); at least 2 are needed (train and test)")
    val: list[Pair] = []
    if any(splits):
        train = [p for p, s in zip(pairs, splits) if s not in ("test", "val")]
        test = [p for p, s in zip(pairs, splits) if s == "test"]
        val = [p for p, s in zip(pairs, splits) if s == "val"]
    else:
        order = list(range(len(pairs)))
        random.Random(seed).shuffle(order)
        n_test = max(1, int(round(len(pairs) * test_frac)))
        test_idx = set(order[:n_test])
        train = [p for i, p in enumerate(pairs) if i not in test_idx]
        test = [p for i, p in enumerate(pairs) if i in test_idx]
    if not train or not test:
        raise DataError(f"{path}: {len(train)} training and {len(test)} test pairs; both must be non-empty")
    if val:
        return GenData("csv", subsample(train, fraction, n_train, seed), test, notes, val)
    train, val = train_and_val(train, fraction, n_train, val_frac, seed)
    return GenData("csv", train, test, notes, val)


GEN_DATASETS = {"mimic_cxr": load_mimic_cxr, "csv": load_csv_pairs}


def load_generation_data(name: str, data_dir: str | os.PathLike | None, tokenizer=None, **options) -> GenData:
    """The train/test (and, with ``val_frac`` or a val split, validation) pairs of dataset ``name``."""
    if name not in GEN_DATASETS:
        raise DataError(f"unknown text-to-image dataset {name!r}; available: {', '.join(GEN_DATASETS)}")
    if data_dir is None:
        raise DataError(f"--data-dir is required for dataset {name!r}")
    fn = GEN_DATASETS[name]
    import inspect

    known = set(inspect.signature(fn).parameters) - {"data_dir", "tokenizer"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise DataError(f"dataset {name!r} has no option(s) {unknown}; it takes: {', '.join(sorted(known))}")
    return fn(data_dir, tokenizer, **options)


# ------------------------------------------------------------------------------------ torch dataset
def load_grayscale(path: str, resolution: int) -> Image.Image:
    """Grey image, shorter side resized to ``resolution`` (bicubic), centre-cropped square."""
    from .images import load_image

    img = load_image(path).convert("L")
    w, h = img.size
    s = resolution / min(w, h)
    img = img.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def pixel_values(img: Image.Image) -> torch.Tensor:
    """A grey PIL image -> [3, H, W] float in [-1, 1] (the grey channel replicated)."""
    arr = torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32)) / 127.5 - 1.0
    return arr[None].expand(3, -1, -1).contiguous()


class PairDataset(torch.utils.data.Dataset):
    """``{"pixel_values": [3, R, R] in [-1, 1], "input_ids": [77]}`` per pair (prompts truncated to the
    tokenizer's context, padded to it)."""

    def __init__(self, pairs: list[Pair], tokenizer, resolution: int):
        self.pairs, self.tokenizer, self.resolution = list(pairs), tokenizer, int(resolution)
        self.input_ids = tokenizer([p.text for p in self.pairs], padding="max_length", truncation=True,
                                   max_length=tokenizer.model_max_length, return_tensors="pt").input_ids

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": pixel_values(load_grayscale(self.pairs[i].path, self.resolution)),
                "input_ids": self.input_ids[i]}
