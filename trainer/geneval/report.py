"""One generation report: fidelity (FID, KID), coverage (precision, recall, density, coverage), diversity
(MS-SSIM) and memorization, for one or several generated sets against one real set, on one or several
feature extractors, with the Kendall tau between the rankings the extractors give (Woodland et al.)."""
from __future__ import annotations

import csv
import itertools
import json
import os
from pathlib import Path
from typing import Sequence

from .extractors import Extractor, resolve
from .images import ImageSet, ImageSetError, load_set


def read_prompts(path: str | os.PathLike, names: Sequence[str]) -> list[str]:
    """Prompts for the images ``names``: a CSV with an image column (``image``/``path``/``file``) and a
    prompt column (``prompt``/``text``), matched by file name; or a text file, one prompt per line, in
    the images' sorted order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ImageSetError(f"--prompts: {path} not found")
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
        cols = set(rows[0]) if rows else set()
        img_col = next((c for c in ("image", "path", "file", "filename") if c in cols), None)
        txt_col = next((c for c in ("prompt", "text", "caption") if c in cols), None)
        if img_col is None or txt_col is None:
            raise ImageSetError(f"--prompts: {path.name} needs an image column (image/path/file) and a prompt "
                                f"column (prompt/text); found {', '.join(sorted(cols)) or 'no header'}")
        table = {Path(r[img_col]).name: r[txt_col] for r in rows}
        missing = [n for n in names if n not in table]
        if missing:
            raise ImageSetError(f"--prompts: {len(missing)} generated image(s) have no prompt in {path.name} "
                                f"(e.g. {missing[0]})")
        return [table[n] for n in names]
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) != len(names):
        raise ImageSetError(f"--prompts: {path.name} has {len(lines)} prompts for {len(names)} generated images "
                            f"(one per line, in sorted file order; or a CSV with image,prompt)")
    return lines


def kendall_taus(values: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Kendall tau between the method rankings of each pair of extractors (``values[extractor][method]``)."""
    from scipy.stats import kendalltau

    out = {}
    for a, b in itertools.combinations(values, 2):
        methods = sorted(set(values[a]) & set(values[b]))
        if len(methods) < 2:
            continue
        tau, p = kendalltau([values[a][m] for m in methods], [values[b][m] for m in methods])
        out[f"{a} vs {b}"] = {"tau": float(tau), "p_value": float(p), "n_methods": len(methods)}
    return out


def evaluate(real, fakes: dict[str, object], train=None, prompts: dict[str, list[str]] | None = None,
             extractors: Sequence[str] = ("inception",), n_boot: int = 50, fpr: float = 0.01, k: int = 5,
             out_dir: str | os.PathLike | None = None, device: str = "cpu", progress: bool = True,
             seed: int = 0) -> dict:
    """The report for ``fakes`` (name -> folder / image list / ImageSet) against ``real``; memorization when
    ``train`` is given (``real`` then serves as the held-out calibration set). Writes the contact sheets
    under ``out_dir`` (when given)."""
    from .diversity import diversity
    from .fidelity import fidelity
    from .memorization import memorization
    from .prdc import prdc
    from .sheet import contact_sheet

    exs = [e if isinstance(e, Extractor) else resolve(e, device) for e in (extractors or ["inception"])]
    names = [e.name for e in exs]
    if len(set(names)) < len(names):
        raise ImageSetError(f"--extractor: the same extractor twice ({', '.join(names)})")

    def as_set(images, role, thumbs=False):
        return images if isinstance(images, ImageSet) else load_set(images, exs, role=role, thumbs=thumbs,
                                                                      progress=progress)

    real_set = as_set(real, "real", thumbs=True)
    train_set = as_set(train, "train") if train is not None else None
    report: dict = {"extractors": [e.describe() for e in exs], "n_real": len(real_set),
                    "n_train": len(train_set) if train_set is not None else None, "sets": {}, "warnings": []}
    for name, images in fakes.items():
        fake = as_set(images, "fake", thumbs=True)
        entry: dict = {"n": len(fake), "fidelity": {}, "prdc": {}}
        for e in exs:
            r, f = real_set.features[e.name], fake.features[e.name]
            entry["fidelity"][e.name] = fidelity(r, f, n_boot=n_boot, seed=seed)
            try:
                entry["prdc"][e.name] = prdc(r, f, k=k)
            except ValueError as err:
                entry["prdc"][e.name] = {"error": str(err)}
        warning = entry["fidelity"][exs[0].name]["warning"]
        if warning and warning not in report["warnings"]:
            report["warnings"].append(warning)
        entry["diversity"] = diversity(fake.thumbs, (prompts or {}).get(name), real_set.thumbs, seed=seed)
        if train_set is not None:
            mem = memorization(train_set, real_set, fake, feature=exs[0].name, fpr=fpr)
            if out_dir is not None:
                rows = [{"fake": fake.names.index(r["image"]), "train": r["nearest_index"],
                         "label": _label(r, mem)} for r in mem["flagged"]]
                title = f"{name}: {mem['n_flagged']} of {len(fake)} flagged as memorized"
                if not rows:  # nothing flagged: show the closest pairs, so a reader can judge
                    closest = sorted(mem["per_image"], key=lambda r: r["score"])[:8]
                    rows = [{"fake": fake.names.index(r["image"]), "train": r["nearest_index"],
                             "label": _label(r, mem) + ", not flagged"} for r in closest]
                    title = f"{name}: none flagged; the 8 closest pairs"
                sheet = contact_sheet(rows, fake, train_set, Path(out_dir) / f"memorization_{_slug(name)}.png", title)
                mem["contact_sheet"] = str(sheet) if sheet else None
            entry["memorization"] = mem
        report["sets"][name] = entry
    if len(exs) > 1 and len(report["sets"]) > 1:
        by = {e.name: {m: s["fidelity"][e.name]["fid"] for m, s in report["sets"].items()} for e in exs}
        report["ranking_agreement"] = {"by": "fid", "kendall_tau": kendall_taus(by)}
    return report


def _label(row: dict, mem: dict) -> str:
    by = row["by"]
    return f"{by} relative distance {row[by + '_relative']:.3f} < {mem['thresholds'][by]:.3f}" if row["flagged"] \
        else f"{by} relative distance {row[by + '_relative']:.3f} (threshold {mem['thresholds'][by]:.3f})"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "fake"


def _ci(v) -> str:
    return f" [{v[0]:.4g}, {v[1]:.4g}]" if v else ""


def format_report(report: dict) -> str:
    """The report as text (what ``python -m trainer.geneval`` prints)."""
    lines = ["extractors: " + ", ".join(f"{e['name']} ({e['sha256']})" for e in report["extractors"]),
             f"real: {report['n_real']} images" + (f"; train: {report['n_train']} images" if report["n_train"] else "")]
    for name, s in report["sets"].items():
        lines.append(f"\n{name} ({s['n']} generated images)")
        for ex, f in s["fidelity"].items():
            p = s["prdc"].get(ex, {})
            pr = (f"  P {p['precision']:.3f}  R {p['recall']:.3f}  D {p['density']:.3f}  C {p['coverage']:.3f}"
                  if "precision" in p else f"  PRDC: {p.get('error', '')}")
            lines.append(f"  [{ex}] FID {f['fid']:.3f}{_ci(f['fid_ci95'])}  KID {f['kid']:.5f}{_ci(f['kid_ci95'])}" + pr)
        d = s["diversity"]
        if d.get("ms_ssim") is not None:
            ref = f" (real set {d['real_set_ms_ssim']:.3f})" if d.get("real_set_ms_ssim") is not None else ""
            kind = f"intra-prompt over {d['n_prompts']} prompts" if d["kind"] == "intra_prompt" else "set-level"
            lines.append(f"  diversity: MS-SSIM {d['ms_ssim']:.3f} ({kind}; lower = more diverse){ref}")
        m = s.get("memorization")
        if m:
            loo = f", leave-one-out {m['fpr_leave_one_out']:.3f}" if m.get("fpr_leave_one_out") is not None else ""
            taus = ", ".join(f"{c} {t:.3f}" for c, t in m["thresholds"].items())
            lines.append(f"  memorization: {m['n_flagged']} of {m['n_generated']} flagged as near-copies of training "
                         f"images (relative-distance thresholds {taus}, calibrated on {m['n_heldout']} held-out images; "
                         f"false-positive rate: target {m['fpr_target']:.3f}, held-out {m['heldout_flag_rate']:.3f}{loo})")
            for r in m["flagged"][:10]:
                lines.append(f"    {r['image']}  ~  {r['nearest']}  ({_label(r, m)}; pixel distance {r['pixel_distance']:.3f})")
            if m.get("contact_sheet"):
                lines.append(f"    contact sheet: {m['contact_sheet']}")
            lines += [f"    note: {n}" for n in m.get("notes", [])]
    for pair, t in (report.get("ranking_agreement") or {}).get("kendall_tau", {}).items():
        lines.append(f"\nranking agreement (FID) {pair}: Kendall tau {t['tau']:.3f} over {t['n_methods']} sets")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def write_json(report: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float))
