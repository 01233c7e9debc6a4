"""Ratios, PASS/FAIL targets, the printed table and the JSON-safe record of a perf run."""
from __future__ import annotations

import math
import os

import torch

from .bench import Bench, GC, TARGETS


# ------------------------------------------------------------------------------------------ reports

def fmt(v, spec: str, na: str = "n/a") -> str:
    return na if v is None else format(v, spec)


def json_safe(obj):
    """NaN/inf -> None, so the JSON is standard (``allow_nan=False``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def format_table(result: dict) -> str:
    cols = ["method", "trainable", "train ms/step", "x full", "peak MB", "x full", "infer ms", "merged ms", "x base"]
    rows = [["base (no method)", "-", "-", "-", "-", "-", fmt(result["base"]["infer_ms"], ".1f"), "-", "1.00"]]
    for r in result["methods"]:
        if "error" in r and "train_ms" not in r:
            rows.append([r["method"], "error", r["error"][:60], "", "", "", "", "", ""])
            continue
        rt = r["ratios"]
        rows.append([r["method"], f"{r['trainable_params']:,}", f"{r['train_ms']:.1f}",
                     fmt(rt["train_time_vs_full"], ".2f"), fmt(r.get("peak_mb"), ".0f"),
                     fmt(rt["peak_memory_vs_full"], ".2f"), f"{r['infer_ms']:.1f}", fmt(r["merged_ms"], ".1f"),
                     fmt(rt["merged_vs_base"] if r["mergeable"] else rt["infer_vs_base"], ".2f")])
    widths = [max(len(str(row[i])) for row in [cols] + rows) for i in range(len(cols))]
    line = lambda row: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(row, widths)))
    out = [line(cols), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    out.append("x base: merged latency / base latency for mergeable methods, else unmerged / base.")
    if any(r["method"].endswith(GC) for r in result["methods"]):
        out.append(f"<method>{GC}: the method trained with gradient checkpointing (--grad-checkpointing).")
    return "\n".join(out)


def format_targets(targets: list[dict]) -> str:
    out = ["targets:"]
    for t in targets:
        verdict = "n/a " if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        out.append(f"  [{verdict}] {t['name']}: {value} (target {t['op']} {t['target']:g})"
                   + (f"  {t['note']}" if t["note"] else ""))
    return "\n".join(out)


def environment(device: str) -> dict:
    import platform

    env = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count()}
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    else:
        env["cpu"] = platform.processor() or platform.machine()
        try:
            env["loadavg"] = list(os.getloadavg())
        except OSError:
            pass
    return env


def ratio(a, b) -> float | None:
    if a is None or b is None or not b or not math.isfinite(a) or not math.isfinite(b):
        return None
    return a / b


def check(name: str, value, op: str, target: float, note: str = "") -> dict:
    ok = None if value is None else (value <= target if op == "<=" else value >= target)
    return {"name": name, "value": value, "op": op, "target": target, "pass": ok, "note": note}


def _memory_note(bench: Bench) -> str:
    """The memory targets are stated for ViT-B/16 at batch 64: say where this run measured instead."""
    where = f"measured on {bench.backbone}, batch {bench.batch_size}, {torch.device(bench.device).type}"
    if bench.backbone.startswith("vit_base_patch16") and bench.batch_size == 64:
        return ""
    smaller = "" if bench.backbone.startswith("vit_base") else " (a smaller model than the target's)"
    return f"({where}{smaller}; target stated for ViT-B/16 at batch 64)"


def build_targets(bench: Bench, family: str, size: int, rows: list[dict], lp: dict | None) -> list[dict]:
    by = {r["method"]: r for r in rows if "ratios" in r}
    targets = []
    lora = by.get("lora")
    vit_b = "vit_base" in bench.backbone
    note = "" if vit_b else "(target meant for a ViT-B-sized model)"
    if lora:
        targets.append(check("LoRA peak memory vs full", lora["ratios"]["peak_memory_vs_full"], "<=",
                             TARGETS["lora_memory_vs_full"], note))
        targets.append(check("LoRA train step time vs full", lora["ratios"]["train_time_vs_full"], "<=",
                             TARGETS["lora_time_vs_full"], note))
    mem_note = _memory_note(bench)
    gc = by.get("lora" + GC)
    if gc:
        targets.append(check("LoRA + gradient checkpointing peak memory vs full", gc["ratios"]["peak_memory_vs_full"],
                             "<=", TARGETS["lora_gc_memory_vs_full"], mem_note))
    if by.get("ssf"):
        targets.append(check("SSF peak memory vs full", by["ssf"]["ratios"]["peak_memory_vs_full"], "<=",
                             TARGETS["ssf_memory_vs_full"], mem_note))
    for r in rows:
        if r.get("mergeable") and not r["method"].endswith(GC):  # a +gc row merges as its method does
            targets.append(check(f"{r['method']} merged inference vs base", r["ratios"]["merged_vs_base"], "<=",
                                 TARGETS["merged_vs_base"]))
    if lp is not None:
        targets.append(check("linear-probe epoch: frozen backbone / cached features", lp.get("speedup"), ">=",
                             TARGETS["linear_probe_cached_speedup"]))
    if lora:
        gpu_case = (torch.device(bench.device).type == "cuda" and bench.backbone.startswith("vit_base_patch16")
                    and size == 224 and bench.dtype == "bf16")
        full = by.get("full", {})
        targets.append(check("LoRA training images/s (ViT-B/16, 224, bf16, H100)",
                             lora["images_per_s"] if gpu_case else None, ">=", TARGETS["lora_images_per_s_h100"],
                             (f"full: {full.get('images_per_s', float('nan')):.0f} img/s" if gpu_case else
                              f"n/a here; measured {lora['images_per_s']:.1f} img/s on this "
                              f"{bench.device} with {bench.backbone}")))
    return targets
