"""HAM10000 (Tschandl et al. 2018): 10015 dermatoscopic images, 7 diagnoses, grouped by lesion."""
from __future__ import annotations

from ..index import DatasetIndex
from ..scan import find_file, index_files_by_stem, require_dir
from ..subgroups import DEFAULT_AGE_BINS, clean_values, demographics
from .common import check_labels, match_images, read_table, single_label_index

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
EXPECTED = """data_dir/
  HAM10000_metadata.csv            columns lesion_id,image_id,dx,dx_type,age,sex,localization
  HAM10000_images_part_1/ISIC_0024306.jpg ...
  HAM10000_images_part_2/ISIC_0029306.jpg ...   (images may be in any subfolder)"""


def load_ham10000(data_dir, age_bins=DEFAULT_AGE_BINS) -> DatasetIndex:
    """HAM10000 from its original (or Kaggle) layout; groups = lesion_id (several images per lesion).

    subgroups: sex (F/M), age (binned at `age_bins`), localization, where the metadata has them.
    """
    root = require_dir(data_dir, EXPECTED)
    csv = find_file(root, ["HAM10000_metadata.csv"], EXPECTED)
    df = read_table(csv, ["lesion_id", "image_id", "dx"], EXPECTED, dtype=str)
    df["dx"] = df["dx"].str.strip()
    check_labels(df["dx"], CLASSES, csv)
    images = index_files_by_stem(root, (".jpg", ".jpeg", ".png"))
    keep, paths, notes = match_images("ham10000", root, df["image_id"].str.strip().tolist(), images, EXPECTED)
    df = df.iloc[keep]
    subgroups = demographics(df, "sex", "age", age_bins)
    if "localization" in df.columns:
        subgroups["localization"] = clean_values(df["localization"])
    return single_label_index("ham10000", root, paths, df["dx"].tolist(), CLASSES,
                              groups=df["lesion_id"].tolist(), notes=notes, subgroups=subgroups)
