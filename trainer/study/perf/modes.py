"""The two modes of ``python -m trainer.perf``: every method against full fine-tuning, and the data pipeline."""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .bench import Bench, MEM_STEPS, TARGETS, build, infer_fn, input_size, make_batch, make_train_step, timed
from .measure import linear_probe_epoch, measure_method, warm_up
from .memory import cpu_memory, release_memory
from .report import build_targets, check, environment, ratio


# --------------------------------------------------------------------------------------------- modes

def run_methods(args, bench: Bench, methods: list[str]) -> dict:
    from adapters import create_backbone, family_of

    cuda = torch.device(bench.device).type == "cuda"
    family = family_of(create_backbone(bench.backbone, bench.num_classes, pretrained=False, img_size=bench.img_size))
    size = input_size(bench, warn=True)
    mem = {}
    if not cuda:
        t0 = time.time()
        print(f"memory: {len(methods)} fresh processes ({args.mem_isolation}), {args.mem_jobs} at a time ...",
              flush=True)
        mem = cpu_memory(bench, methods, args.mem_jobs, MEM_STEPS, args.mem_isolation)
        print(f"memory: done in {time.time() - t0:.0f}s", flush=True)
    x, y = make_batch(bench, size, family)
    print(f"timing: {len(methods)} methods, {bench.warmup} warm-up + {bench.steps} steps each ...", flush=True)
    warm_up(bench, x, y)
    from adapters import count_params

    base_model = build(bench, None).eval()  # kept: every method's inference is timed beside it
    base_infer = infer_fn(base_model, bench, x)
    rows = []
    for m in methods:
        try:
            r = measure_method(bench, m, x, y, base_infer)
        except Exception as e:  # noqa: BLE001 - one broken method must not lose the others' figures
            r = {"method": m, "error": f"{type(e).__name__}: {e}"}
        if not cuda:
            c = mem.get(m, {})
            if "error" in c:
                r["memory_error"] = c["error"]
            else:
                r.update(peak_bytes=c["train_bytes"], peak_rss_bytes=c["peak_rss_bytes"],
                         base_rss_bytes=c["base_rss_bytes"], memory_source=c["source"])
        if r.get("peak_bytes") is not None:
            r["peak_mb"] = r["peak_bytes"] / 2 ** 20
        rows.append(r)
        if "train_ms" in r:
            print(f"  {m:14s} train {r['train_ms']:8.1f} ms/step  infer {r['infer_ms']:7.1f} ms", flush=True)
        else:
            print(f"  {m:14s} {r['error']}", flush=True)
    all_base = [t for r in rows for t in r.get("base_infer_ms_all", [])]
    base = {"total_params": count_params(base_model)[1],
            "infer_ms": statistics.median(all_base) if all_base else None, "infer_ms_all": all_base}
    del base_model, base_infer
    release_memory(bench.device)
    full = next((r for r in rows if r["method"] == "full" and "train_ms" in r), {})
    for r in rows:
        if "train_ms" not in r:
            continue
        # Inference ratios against the base latency timed beside this method (interleaved).
        r["ratios"] = {"train_time_vs_full": ratio(r["train_ms"], full.get("train_ms")),
                       # on minima: robust to bursts of load from other processes on a shared machine
                       "train_time_vs_full_min": ratio(r["train_ms_min"], full.get("train_ms_min")),
                       "peak_memory_vs_full": ratio(r.get("peak_bytes"), full.get("peak_bytes")),
                       "infer_vs_base": ratio(r["infer_ms"], r["base_infer_ms"]),
                       "merged_vs_base": ratio(r["merged_ms"], r["base_infer_ms"])}
    lp = None
    if "linear_probe" in methods:
        lp = linear_probe_epoch(bench, x, y, batches=max(4, bench.steps))
    targets = build_targets(bench, family, size, rows, lp)
    env = environment(bench.device)  # after timing: the load average covers the timed period
    return {"kind": "medpeft-perf", "mode": "methods", "settings": {**asdict(bench), "img_size": size},
            "family": family, "environment": env,
            "memory_metric": "cuda.max_memory_allocated minus allocated before the model" if cuda else
            "fresh subprocess per method: peak RSS (VmHWM) minus RSS before the model",
            "base": base, "methods": rows, "linear_probe_cached_features": lp, "targets": targets}


def run_data_pipeline(args, bench: Bench) -> dict:
    """Images/s through the trainer's own train loader (CachedImageDataset + DataLoader + train
    transform, from a synthetic decoded-image cache) vs images/s of a training step."""
    import types

    import numpy as np

    from adapters import create_backbone, family_of

    from ...data.transforms import cache_size_for
    from ...loops.classify import build_loaders, model_data_config
    from ...config import TrainConfig

    method = (args.methods or ["lora"])[0]
    cfg = TrainConfig(method=method, backbone=bench.backbone, img_size=bench.img_size, batch_size=bench.batch_size,
                      num_workers=args.workers)
    probe = create_backbone(bench.backbone, bench.num_classes, pretrained=False, img_size=bench.img_size)
    family = family_of(probe)
    dcfg = model_data_config(probe, cfg)
    del probe
    size = input_size(bench, warn=True)
    dcfg["input_size"] = [3, size, size]
    side = cache_size_for(dcfg)
    n = max(args.cache_images, bench.batch_size * 4)
    with tempfile.TemporaryDirectory(prefix="medpeft-perf-") as tmp:
        rng = np.random.default_rng(0)
        path = Path(tmp) / "cache.npy"
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, side, side, 3))
        for i in range(0, n, 64):  # decoded pixels: the transforms' cost does not depend on content
            array[i:i + 64] = rng.integers(0, 256, size=(min(64, n - i), side, side, 3), dtype=np.uint8)
        array.flush()
        del array
        cache = np.load(path, mmap_mode="r")
        index = types.SimpleNamespace(labels=np.arange(n, dtype=np.int64) % bench.num_classes)
        splits = {"train": np.arange(n), "val": np.arange(1), "test": np.arange(1)}
        train_dl, _, _ = build_loaders(cfg, index, cache, dcfg, splits, seed=0)
        batches = max(2, args.loader_batches)
        print(f"loader: {args.workers} workers, cache {n} x {side}px -> {dcfg['input_size'][-1]}px, "
              f"batch {bench.batch_size}, timing {batches} batches ...", flush=True)
        it = iter(train_dl)
        next(it)  # worker start-up and first batch excluded
        seen, t0 = 0, time.perf_counter()
        while seen < batches:
            try:
                xb, _ = next(it)
            except StopIteration:
                it = iter(train_dl)
                continue
            seen += 1
        loader_s = time.perf_counter() - t0
        loader_ips = batches * bench.batch_size / loader_s
        del it, train_dl
    x, y = make_batch(bench, size, family)
    model = build(bench, method).train()
    step, _ = make_train_step(model, bench, x, y)
    ms = statistics.median(timed(step, bench.steps, bench.warmup, bench.device))
    model_ips = 1000 * bench.batch_size / ms
    r = loader_ips / model_ips
    targets = [check(f"loader images/s / {method} training images/s", r, ">=", TARGETS["loader_vs_model"],
                     "measured one after the other; in training they share the CPU" if bench.device == "cpu" else "")]
    return {"kind": "medpeft-perf", "mode": "data-pipeline", "settings": {**asdict(bench), "img_size": size},
            "environment": environment(bench.device), "method": method, "workers": args.workers,
            "cache_images": n, "cache_side": side, "loader_images_per_s": loader_ips,
            "model_images_per_s": model_ips, "model_train_ms": ms, "ratio": r, "targets": targets}
