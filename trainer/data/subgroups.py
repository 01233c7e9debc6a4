"""Subgroup attributes for fairness metrics: normalising sex, binning ages, grouping skin types.

The loaders fill DatasetIndex.subgroups with these (attribute name -> str array [N]); a value
that is missing or cannot be read becomes UNKNOWN, so no image is dropped and unknowns form
their own group (reported, and scored when large enough, like any other).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from .errors import DataError

UNKNOWN = "unknown"
DEFAULT_AGE_BINS: tuple[int, ...] = (40, 60, 80)   # -> <40, 40-59, 60-79, 80+
_SEX = {"f": "F", "female": "F", "woman": "F", "w": "F", "m": "M", "male": "M", "man": "M"}
_FITZPATRICK = {1: "I-II", 2: "I-II", 3: "III-IV", 4: "III-IV", 5: "V-VI", 6: "V-VI"}


def group_order(value: str) -> tuple:
    """Sort key of subgroup values: age bins youngest first ('<40', '40-59', ..., '80+'), skin types
    I-II before III-IV, other values alphabetically, 'unknown' last."""
    import re

    text = str(value)
    if text == UNKNOWN:
        return (2, 0.0, text)
    m = re.match(r"^(<)?(\d+)", text)
    if m:
        return (0, float(m.group(2)) - (0.5 if m.group(1) else 0.0), text)
    return (1, 0.0, text)


def normalise_sex(values: Iterable) -> np.ndarray:
    """'F'/'female'/'Female' -> 'F', 'M'/'male' -> 'M'; anything else (NaN, 'O', 'unknown') -> 'unknown'."""
    return np.asarray([_SEX.get(str(v).strip().lower(), UNKNOWN) for v in values], dtype=str)


def check_age_bins(edges: Sequence) -> tuple[int, ...]:
    """Age bin edges ('40,60,80' or a sequence) as strictly increasing positive integers; DataError otherwise."""
    if isinstance(edges, str):
        edges = [e for e in edges.replace(" ", "").split(",") if e]
    try:
        out = tuple(int(e) for e in edges)
    except (TypeError, ValueError):
        raise DataError(f"age bins must be integers (years), e.g. 40,60,80; got {edges!r}.") from None
    if not out or out[0] <= 0 or any(b <= a for a, b in zip(out, out[1:])):
        raise DataError(f"age bins must be increasing positive years, e.g. 40,60,80; got {list(edges)}.")
    return out


def age_bin_names(edges: Sequence = DEFAULT_AGE_BINS) -> list[str]:
    """The bin labels for `edges`, youngest first: (40, 60, 80) -> ['<40', '40-59', '60-79', '80+']."""
    edges = check_age_bins(edges)
    names = [f"<{edges[0]}"] + [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])]
    return names + [f"{edges[-1]}+"]


def parse_age(value) -> float | None:
    """Years from a number or a DICOM Age String ('045Y', '006M', '010W', '003D'); None if unreadable."""
    text = str(value).strip().upper()
    if not text or text in {"NAN", "NONE"}:
        return None
    scale = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}.get(text[-1])
    if scale is not None:
        text = text[:-1]
    try:
        years = float(text) * (scale or 1.0)
    except ValueError:
        return None
    return years if math.isfinite(years) and 0 <= years < 130 else None


def bin_ages(values: Iterable, edges: Sequence = DEFAULT_AGE_BINS) -> np.ndarray:
    """Each age (years, or a DICOM age string) as its bin label; missing or implausible -> 'unknown'."""
    edges = check_age_bins(edges)
    names = age_bin_names(edges)
    out = []
    for v in values:
        years = parse_age(v)
        out.append(UNKNOWN if years is None else names[int(np.searchsorted(edges, years, side="right"))])
    return np.asarray(out, dtype=str)


def group_fitzpatrick(values: Iterable) -> np.ndarray:
    """Fitzpatrick skin type 1-6 -> 'I-II' / 'III-IV' / 'V-VI'; -1, missing or other -> 'unknown'."""
    out = []
    for v in values:
        try:
            k = float(str(v).strip())
        except ValueError:
            k = -1.0
        out.append(_FITZPATRICK.get(int(k), UNKNOWN) if k.is_integer() else UNKNOWN)
    return np.asarray(out, dtype=str)


def clean_values(values: Iterable) -> np.ndarray:
    """Free-text attribute values (e.g. a --group-columns column) stripped; empty or NaN -> 'unknown'."""
    out = []
    for v in values:
        text = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip()
        out.append(text if text and text.lower() != "nan" else UNKNOWN)
    return np.asarray(out, dtype=str)


def demographics(table, sex_column: str, age_column: str, age_bins: Sequence = DEFAULT_AGE_BINS) -> dict:
    """{'sex': F/M/unknown, 'age': bin labels} from a pandas table's columns, for those it has."""
    out = {}
    if sex_column in table.columns:
        out["sex"] = normalise_sex(table[sex_column])
    if age_column in table.columns:
        out["age"] = bin_ages(table[age_column], age_bins)
    return out


def parse_columns(columns) -> list[str]:
    """'sex,age' or ['sex', 'age'] -> ['sex', 'age'] (None or '' -> [])."""
    if columns is None:
        return []
    if isinstance(columns, str):
        columns = columns.split(",")
    return [str(c).strip() for c in columns if str(c).strip()]


def column_subgroups(table, columns, age_bins: Sequence = DEFAULT_AGE_BINS) -> dict:
    """subgroups from named columns of a metadata table; a column named age is binned, sex/gender normalised.

    DataError naming the missing columns and those the table has.
    """
    columns = parse_columns(columns)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"group column(s) {missing} not in the metadata table; it has {list(table.columns)}.")
    out = {}
    for c in columns:
        kind = c.strip().lower().replace("_", " ")
        if kind in {"age", "patient age", "patientage"}:
            out[c] = bin_ages(table[c], age_bins)
        elif kind in {"sex", "gender", "patient sex", "patient gender", "patientsex"}:
            out[c] = normalise_sex(table[c])
        else:
            out[c] = clean_values(table[c])
    return out
