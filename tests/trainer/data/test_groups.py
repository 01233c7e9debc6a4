"""Subgroup attributes (DatasetIndex.subgroups): normalising, binning, every loader's extraction, subsetting.

Real tables where they exist offline: the NIH ChestX-ray14 Data_Entry_2017_v2020.csv and the RSNA
pneumonia DICOM-header table that torchxrayvision ships; expected values come from pandas (pd.cut).
"""
from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from trainer.data import DataError, DatasetIndex, load_dataset
from trainer.data.splits import make_splits
from trainer.data.subgroups import (age_bin_names, bin_ages, check_age_bins, group_fitzpatrick,
                                    normalise_sex, parse_age)

TXV_DATA = Path(__import__("torchxrayvision").__file__).parent / "data"


def save_png(path: Path, size=(16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 128).save(path)
    return path


def pandas_bins(ages, edges=(40, 60, 80)) -> np.ndarray:
    """Independent binning with pd.cut (right-open intervals), implausible/missing -> unknown."""
    ages = pd.to_numeric(pd.Series(ages), errors="coerce")
    ages = ages.where((ages >= 0) & (ages < 130))
    labels = age_bin_names(edges)
    cut = pd.cut(ages, [-np.inf, *edges, np.inf], right=False, labels=labels)
    return cut.astype(object).where(cut.notna(), "unknown").astype(str).to_numpy()


def test_normalising_and_binning():
    assert normalise_sex(["F", "female", " Male ", "M", "O", None, np.nan, ""]).tolist() == \
        ["F", "F", "M", "M", "unknown", "unknown", "unknown", "unknown"]
    assert age_bin_names() == ["<40", "40-59", "60-79", "80+"]
    assert bin_ages([0, 39, 39.5, 40, 59, 60, 79.9, 80, 95, None, "abc", 148]).tolist() == \
        ["<40", "<40", "<40", "40-59", "40-59", "60-79", "60-79", "80+", "80+", "unknown", "unknown", "unknown"]
    assert parse_age("045Y") == 45 and parse_age("006M") == 0.5 and parse_age("") is None
    assert bin_ages(["045Y", "070Y", "018M"]).tolist() == ["40-59", "60-79", "<40"]
    assert bin_ages([10, 30, 50], "18,65").tolist() == ["<18", "18-64", "18-64"]
    assert age_bin_names([50]) == ["<50", "50+"]
    for bad in ([60, 40], [], "a,b", [0, 10]):
        with pytest.raises(DataError, match="age bins"):
            check_age_bins(bad)
    assert group_fitzpatrick([1, "2", 3.0, 4, 5, "6", -1, None, "", 7, 2.5]).tolist() == \
        ["I-II", "I-II", "III-IV", "III-IV", "V-VI", "V-VI"] + ["unknown"] * 5


def test_index_validates_and_subset_keeps_subgroups_aligned(tmp_path):
    paths = [str(tmp_path / f"{i}.png") for i in range(6)]
    sex = np.asarray(["F", "M", "F", "M", "F", "unknown"])
    index = DatasetIndex("t", paths, np.arange(6) % 2, ["a", "b"], groups=[f"p{i}" for i in range(6)],
                         subgroups={"sex": sex, "age": ["<40"] * 3 + ["80+"] * 3})
    assert index.subgroups["age"].dtype.kind == "U"
    sub = index.subset(np.asarray([True, False, True, True, False, True]))
    assert sub.subgroups["sex"].tolist() == ["F", "F", "M", "unknown"]
    assert sub.subgroups["age"].tolist() == ["<40", "<40", "80+", "80+"]
    assert index.subset([5, 0]).subgroups["sex"].tolist() == ["unknown", "F"]
    assert DatasetIndex("t", paths, np.zeros(6), ["a", "b"]).subgroups == {}
    with pytest.raises(DataError, match="subgroup 'sex'"):
        DatasetIndex("t", paths, np.zeros(6), ["a", "b"], subgroups={"sex": ["F"]})
    # the train fraction subsample and the split subsets carry the attributes with their images
    splits = make_splits(index, seed=0, val_frac=0.2, test_frac=0.2)
    for pos in splits.values():
        part = index.subset(pos)
        assert part.subgroups["sex"].tolist() == sex[pos].tolist()


@pytest.mark.slow
def test_chestxray14_real_csv_subgroups(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    with gzip.open(TXV_DATA / "Data_Entry_2017_v2020.csv.gz") as src, \
            open(root / "Data_Entry_2017_v2020.csv", "wb") as dst:
        shutil.copyfileobj(src, dst)
    full = pd.read_csv(root / "Data_Entry_2017_v2020.csv")
    picked = full.iloc[::2800].reset_index(drop=True)        # 41 images spread over the table
    for name in picked["Image Index"]:
        save_png(root / "images" / name)
    index = load_dataset("chestxray14", root, official_split=False)
    assert len(index) == len(picked)
    by_name = {Path(p).name: i for i, p in enumerate(index.paths)}
    order = [by_name[n] for n in picked["Image Index"]]
    assert index.subgroups["sex"][order].tolist() == picked["Patient Gender"].tolist()
    assert index.subgroups["age"][order].tolist() == pandas_bins(picked["Patient Age"]).tolist()
    assert set(index.subgroups["sex"]) == {"F", "M"}
    # the whole real table: counts against pandas, and custom bins
    from trainer.data.subgroups import demographics
    whole = demographics(full, "Patient Gender", "Patient Age")
    assert (whole["sex"] == "M").sum() == 63340 and (whole["sex"] == "F").sum() == 48780
    assert np.array_equal(whole["age"], pandas_bins(full["Patient Age"]))
    assert (whole["age"] == "80+").sum() == int((full["Patient Age"] >= 80).sum()) > 0
    custom = load_dataset("chestxray14", root, official_split=False, age_bins="50")
    assert set(custom.subgroups["age"]) <= {"<50", "50+"}


def test_rsna_subgroups_from_header_table_and_from_dicoms(tmp_path):
    headers = pd.read_csv(TXV_DATA / "kaggle_stage_2_train_images_dicom_headers.csv.gz", dtype=str)
    assert len(headers) == 26684
    ages = pd.to_numeric(headers["PatientAge"])
    odd = headers[ages >= 130].head(2)                  # the real table holds a few impossible ages (e.g. 148)
    picked = pd.concat([headers.head(30), odd])
    root = tmp_path / "rsna"
    (root / "stage_2_train_images").mkdir(parents=True)
    pd.DataFrame({"patientId": picked["PatientID"], "Target": [i % 2 for i in range(len(picked))]}) \
        .to_csv(root / "stage_2_train_labels.csv", index=False)
    dicom = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    with warnings.catch_warnings():      # RSNA's files store ages as '43', not the DICOM form '043Y'
        warnings.simplefilter("ignore")
        for pid, sex, age in zip(picked["PatientID"], picked["PatientSex"], picked["PatientAge"]):
            dicom.PatientSex, dicom.PatientAge = sex, age
            dicom.save_as(root / "stage_2_train_images" / f"{pid}.dcm")
    expect_sex = picked["PatientSex"].tolist()
    expect_age = pandas_bins(picked["PatientAge"]).tolist()
    assert expect_age[-2:] == ["unknown", "unknown"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # reading them is quiet
        from_dicoms = load_dataset("rsna_pneumonia", root)   # no header table: read each file's header
    assert from_dicoms.groups == picked["PatientID"].tolist()
    assert from_dicoms.subgroups["sex"].tolist() == expect_sex
    assert from_dicoms.subgroups["age"].tolist() == expect_age
    shutil.copy(TXV_DATA / "kaggle_stage_2_train_images_dicom_headers.csv.gz", root)
    for f in (root / "stage_2_train_images").iterdir():   # prove the table is used: headers now say otherwise
        d = pydicom.dcmread(f)
        d.PatientSex, d.PatientAge = "O", "001Y"
        d.save_as(f)
    from_table = load_dataset("rsna_pneumonia", root)
    assert from_table.subgroups["sex"].tolist() == expect_sex
    assert from_table.subgroups["age"].tolist() == expect_age
    assert load_dataset("rsna_pneumonia", root, read_headers=False).subgroups == {}


def test_ham10000_and_fitzpatrick_subgroups(tmp_path):
    ham = tmp_path / "ham"
    ids = [f"ISIC_{i:07d}" for i in range(7)]
    pd.DataFrame({"lesion_id": [f"HAM_{i // 2}" for i in range(7)], "image_id": ids,
                  "dx": ["nv", "mel", "bkl", "nv", "bcc", "akiec", "df"], "dx_type": "histo",
                  "age": [35.0, 45.0, None, 85.0, 60.0, 5.0, 79.0],
                  "sex": ["male", "female", "unknown", "male", "female", "male", "female"],
                  "localization": ["back", "face", "unknown", "trunk", " back", "", "scalp"]}) \
        .to_csv((ham.mkdir() or ham) / "HAM10000_metadata.csv", index=False)
    for i in ids:
        save_png(ham / "HAM10000_images_part_1" / f"{i}.jpg")
    index = load_dataset("ham10000", ham)
    assert index.subgroups["sex"].tolist() == ["M", "F", "unknown", "M", "F", "M", "F"]
    assert index.subgroups["age"].tolist() == ["<40", "40-59", "unknown", "80+", "60-79", "<40", "60-79"]
    assert index.subgroups["localization"].tolist() == ["back", "face", "unknown", "trunk", "back", "unknown",
                                                        "scalp"]
    fitz = tmp_path / "fitz"
    fitz.mkdir()
    hashes = [f"h{i}" for i in range(8)]
    pd.DataFrame({"md5hash": hashes, "fitzpatrick_scale": [1, 2, 3, 4, 5, 6, -1, None],
                  "three_partition_label": ["benign", "malignant"] * 4}).to_csv(fitz / "fitzpatrick17k.csv",
                                                                                index=False)
    for h in hashes:
        save_png(fitz / "images" / f"{h}.jpg")
    index = load_dataset("fitzpatrick17k", fitz)
    assert index.subgroups["skin_type"].tolist() == ["I-II", "I-II", "III-IV", "III-IV", "V-VI", "V-VI",
                                                     "unknown", "unknown"]


def test_csv_and_imagefolder_group_columns(tmp_path):
    root = tmp_path / "own"
    rows = []
    for i in range(6):
        cls = "a" if i % 2 else "b"
        save_png(root / cls / f"img{i}.png")
        rows.append({"path": f"{cls}/img{i}.png", "label": cls, "Sex": "F" if i < 3 else "male",
                     "age": str(20 + 12 * i), "site": "" if i == 5 else f"s{i % 2}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    index = load_dataset("csv", root, group_columns="Sex,age,site")
    assert index.subgroups["Sex"].tolist() == ["F", "F", "F", "M", "M", "M"]
    assert index.subgroups["age"].tolist() == ["<40", "<40", "40-59", "40-59", "60-79", "80+"]  # 20..80
    assert index.subgroups["site"].tolist() == ["s0", "s1", "s0", "s1", "s0", "unknown"]
    assert load_dataset("csv", root).subgroups == {}
    with pytest.raises(DataError, match=r"group column\(s\) \['ethnicity'\]"):
        load_dataset("csv", root, group_columns=["ethnicity"])
    # imagefolder: a metadata CSV beside the class folders, by relative path or by bare file name
    meta = pd.DataFrame(rows)[["path", "Sex", "site"]].iloc[:5]
    meta.loc[0, "path"] = "img0.png"
    meta.to_csv(root / "metadata.csv", index=False)
    folder = load_dataset("imagefolder", root, group_columns="Sex,site")
    by_name = {Path(p).name: i for i, p in enumerate(folder.paths)}
    got = [folder.subgroups["Sex"][by_name[f"img{i}.png"]] for i in range(6)]
    assert got == ["F", "F", "F", "M", "M", "unknown"]           # img5 has no row
    assert any("1 of 6 images have no row in metadata.csv" in n for n in folder.notes)
    with pytest.raises(DataError, match="metadata CSV"):
        load_dataset("imagefolder", root, group_columns="Sex", metadata_csv="nope.csv")
