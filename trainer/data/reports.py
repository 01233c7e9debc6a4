"""Radiology report text: split a report into findings and impression, pick the prompt (the
impression, else the findings), and the 3,955 real Indiana University chest X-ray reports that ship
with torchxrayvision (test data and the app's example prompts)."""
from __future__ import annotations

import functools
import gzip
import io
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..assets import package_file
from .errors import DataError

SECTION_RE = re.compile(r"^[ \t]*([A-Z][A-Z /&()\-]{2,40}?)[ \t]*:", re.MULTILINE)
FINDINGS_NAMES = ("FINDINGS", "FINDING", "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION")
IMPRESSION_NAMES = ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "FINDINGS AND IMPRESSION",
                    "FINDINGS/IMPRESSION")


def clean_text(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text or None


def parse_report(text: str) -> dict[str, str | None]:
    """``{"findings": ..., "impression": ...}`` of a free-text radiology report (``None`` when absent).

    Sections start with an upper-case heading and a colon at the start of a line (``FINDINGS:``,
    ``IMPRESSION:``; MIMIC-CXR and IU X-ray style); a section runs to the next heading. Whitespace is
    collapsed. A combined ``FINDINGS AND IMPRESSION:`` section fills both.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_report expects a string, got {type(text).__name__}")
    heads = list(SECTION_RE.finditer(text))
    sections: dict[str, str] = {}
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        name = " ".join(m.group(1).split())
        body = clean_text(text[m.end():end])
        if body and name not in sections:
            sections[name] = body
    findings = next((sections[n] for n in FINDINGS_NAMES if n in sections), None)
    impression = next((sections[n] for n in IMPRESSION_NAMES if n in sections), None)
    return {"findings": findings, "impression": impression}


def prompt_of(report: dict[str, str | None]) -> str | None:
    """The paper's prompt: the impression, else the findings."""
    return report.get("impression") or report.get("findings")


# ------------------------------------------------------------------------------------ IU X-ray reports
def iu_reports_path() -> Path:
    return package_file("torchxrayvision", "data/NLMCXR_reports.tgz", "pip install torchxrayvision", error=DataError)


@functools.lru_cache(maxsize=1)
def _iu_reports_cached(path: str) -> tuple[dict[str, Any], ...]:
    out = []
    raw = gzip.decompress(Path(path).read_bytes())  # ~24 MB; much faster than streaming r:gz
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:  # read in memory, never extracted
        for member in tar:
            if not (member.isfile() and member.name.endswith(".xml")):
                continue
            raw = tar.extractfile(member).read()
            try:
                root = ET.fromstring(raw)
            except ET.ParseError:
                continue
            sections = {}
            for el in root.iter("AbstractText"):
                label = (el.get("Label") or "").strip().upper()
                if label:
                    sections[label] = clean_text("".join(el.itertext()))
            uid = root.find("uId")
            out.append({"id": uid.get("id") if uid is not None else Path(member.name).stem,
                        "file": Path(member.name).name,
                        "findings": sections.get("FINDINGS"), "impression": sections.get("IMPRESSION"),
                        "indication": sections.get("INDICATION"), "comparison": sections.get("COMPARISON")})
    out.sort(key=lambda r: int(re.sub(r"\D", "", r["file"]) or 0))
    return tuple(out)


def iu_reports() -> list[dict[str, Any]]:
    """The Indiana University chest X-ray reports (Demner-Fushman et al. 2016, CC BY-NC-ND 4.0) shipped in
    torchxrayvision: one dict per XML file with ``id``, ``file``, ``findings``, ``impression``,
    ``indication``, ``comparison`` (``None`` when the section is empty), in file-number order."""
    return [dict(r) for r in _iu_reports_cached(str(iu_reports_path()))]


# ------------------------------------------------------------------------------------ records and splits
