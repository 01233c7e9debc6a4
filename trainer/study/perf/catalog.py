"""``python -m trainer.perf --catalog``: every method of the backbone's family at a glance, in one run.

    python -m trainer.perf --catalog --backbone vit_base_patch16_224 --batch-size 64 --json docs/perf/catalog_vit.json
    python -m trainer.perf --catalog --backbone medpeft_tiny_vit --img-size 32 --steps 2 --warmup 1 --json out.json

Per method: trainable parameters (and % of the model), the adapter file's size (``save_adapter``'s
``adapter_model.safetensors``: what you store or push), peak training memory, training step time and
inference latency after ``merge_method`` (unmerged where the method cannot merge), each as a ratio to
full fine-tuning measured in the same process (the timing and memory machinery of ``trainer.perf``,
:func:`trainer.study.perf.modes.run_methods`). Writes the JSON (``--json F``), ``F.md`` (Markdown table),
``F.csv`` and ``F.png`` (Pareto plot: peak memory vs trainable parameters, the front marked; with
``--scores results.csv`` of method,score the score is plotted instead). The app's Leaderboard tab shows
the table of the newest ``docs/perf/catalog_*.json``.
"""
from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

from .bench import Bench
from .report import fmt, ratio

COLUMNS = ("method", "trainable", "trainable %", "adapter MB", "adapter x full", "peak memory x full",
           "step time x full", "merged latency x full", "mergeable")


def adapter_bytes(bench: Bench, method: str) -> int:
    """Size of the adapter file ``save_adapter`` writes for ``method`` on this backbone (CPU, random init)."""
    from adapters import apply_method, create_backbone
    from adapters.io import WEIGHTS_NAME, AdapterConfig, save_adapter

    model = create_backbone(bench.backbone, bench.num_classes, pretrained=False, img_size=bench.img_size)
    model = apply_method(model, method)
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(model, tmp, AdapterConfig(method=method, backbone=bench.backbone, num_classes=bench.num_classes))
        return (Path(tmp) / WEIGHTS_NAME).stat().st_size


def run_catalog(args, bench: Bench, methods: list[str]) -> dict:
    from .modes import run_methods

    result = run_methods(args, bench, methods)
    result["mode"] = "catalog"
    full = next((r for r in result["methods"] if r["method"] == "full" and "train_ms" in r), {})
    for r in result["methods"]:
        try:
            r["adapter_bytes"] = adapter_bytes(bench, r["method"])
        except Exception as e:  # noqa: BLE001 - one method's save failing must not lose the table
            r["adapter_error"] = f"{type(e).__name__}: {e}"
    full_bytes = full.get("adapter_bytes")
    full_latency = full.get("merged_ms") or full.get("infer_ms")
    for r in result["methods"]:
        if "train_ms" not in r:
            continue
        latency = r["merged_ms"] if r.get("mergeable") else r["infer_ms"]
        r["ratios"].update(adapter_vs_full=ratio(r.get("adapter_bytes"), full_bytes),
                           merged_latency_vs_full=ratio(latency, full_latency))
    result["table"] = catalog_rows(result)
    return result


def catalog_rows(result: dict) -> list[dict]:
    """The table as rows of :data:`COLUMNS` (what the Markdown, the CSV and the Leaderboard tab show)."""
    rows = []
    total = (result.get("base") or {}).get("total_params")
    for r in result["methods"]:
        if "train_ms" not in r:
            rows.append({"method": r["method"], "trainable": "error", "trainable %": r.get("error", "")[:60]})
            continue
        rt = r["ratios"]
        rows.append({
            "method": r["method"], "trainable": r["trainable_params"],
            "trainable %": fmt(100 * r["trainable_params"] / total if total else None, ".3f"),
            "adapter MB": fmt(r.get("adapter_bytes") / 2 ** 20 if r.get("adapter_bytes") else None, ".3f"),
            "adapter x full": fmt(rt.get("adapter_vs_full"), ".4f"),
            "peak memory x full": fmt(rt.get("peak_memory_vs_full"), ".2f"),
            "step time x full": fmt(rt.get("train_time_vs_full"), ".2f"),
            "merged latency x full": fmt(rt.get("merged_latency_vs_full"), ".2f"),
            "mergeable": "yes" if r.get("mergeable") else "no"})
    return rows


def markdown(result: dict) -> str:
    s = result["settings"]
    head = (f"Methods at a glance: {s['backbone']} at {s['img_size']}px, batch {s['batch_size']}, {s['dtype']} on "
            f"{s['device']} ({result.get('family')}); ratios to full fine-tuning measured in the same run.\n\n")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in result["table"]:
        lines.append("| " + " | ".join(f"{row.get(c, ''):,}" if isinstance(row.get(c), int) else str(row.get(c, ""))
                                       for c in COLUMNS) + " |")
    return head + "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[str, float, float]]) -> set[str]:
    """Names of the points no other point beats on both axes (fewer parameters, lower y)."""
    front = set()
    for name, x, y in points:
        if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for _, x2, y2 in points):
            front.add(name)
    return front


def pareto_plot(result: dict, path: Path, scores: dict[str, float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["methods"] if "train_ms" in r and r["trainable_params"] > 0]
    if scores:
        pts = [(r["method"], r["trainable_params"], -scores[r["method"]]) for r in rows if r["method"] in scores]
        label = "score (higher is better)"
    else:
        pts = [(r["method"], r["trainable_params"], r["ratios"].get("peak_memory_vs_full"))
               for r in rows if r["ratios"].get("peak_memory_vs_full") is not None]
        label = "peak training memory (x full fine-tuning)"
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(9, 6))
    for name, x, y in pts:
        y = -y if scores else y
        ax.scatter(x, y, color="tab:red" if name in front else "tab:blue", s=30)
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel(label)
    ax.set_title(f"{result['settings']['backbone']}: Pareto front in red")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(result: dict, json_path: str | Path, scores_csv: str | None = None) -> list[Path]:
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md, csv_path, png = json_path.with_suffix(".md"), json_path.with_suffix(".csv"), json_path.with_suffix(".png")
    md.write_text(markdown(result))
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows({c: row.get(c, "") for c in COLUMNS} for row in result["table"])
    scores = None
    if scores_csv:
        with open(scores_csv) as f:
            scores = {row["method"]: float(row["score"]) for row in csv.DictReader(f)}
    pareto_plot(result, png, scores)
    return [md, csv_path, png]


def latest_table(folder: str | Path = "docs/perf") -> tuple[str | None, list[dict]]:
    """(source file, rows) of the newest ``catalog_*.json`` in ``folder`` (the Leaderboard tab's table)."""
    files = sorted(Path(folder).glob("catalog_*.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(files):
        try:
            data = json.loads(path.read_text())
            return str(path), list(data.get("table") or catalog_rows(data))
        except (OSError, ValueError, KeyError):
            continue
    return None, []
