"""Speed and memory of every PEFT method on one backbone, measured in one run.

    python -m trainer.perf                                   # defaults for the device (below)
    python -m trainer.perf --backbone vit_base_patch16_224 --batch-size 128 --dtype bf16 --json perf.json
    python -m trainer.perf --methods full,lora,linear_probe --steps 10
    python -m trainer.perf --data-pipeline             # loader images/s vs the model's images/s

For each method: trainable parameters; the training step time (forward + backward + AdamW step, as
the trainer does it: the trainer's own optimizer over trainable parameters only, gradient clipping;
warm-up steps excluded, median of ``--steps``); peak training memory; inference latency of the
adapted model and of the merged one (``adapters.merge_method``; ``n/a`` where the method cannot be
merged). Ratios: training time and memory relative to ``full`` fine-tuning (always measured as the
reference), inference latency relative to the plain base model - all from the same run.

Peak memory:
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, per method, minus what
  was allocated before the model was built (the input batch): weights + gradients + optimizer
  state + activations.
- CPU: a fresh process per method, started by ``python -m trainer.perf --_child ...``: builds the
  model and runs 2 training steps (the trainer's step order peaks in step 2, when step 1's gradients
  and the optimizer state are alive); it reports its peak resident set size (Linux ``VmHWM``, reset
  through ``/proc/self/clear_refs`` once imports and a throwaway tiny-model step have run) minus its
  resident size just before the model was built. By default (``--mem-isolation fork``) one spawned
  interpreter imports once and forks a fresh process per method, so no method sees another's
  allocations without paying an import per method; ``--mem-isolation spawn`` starts a new
  interpreter per method. Memory processes run ``--mem-jobs`` at a time with one thread each and
  malloc returning freed blocks to the OS, before any timing; timings are taken afterwards in this
  process. (``getrusage().ru_maxrss`` is not used: in a fork+exec child it inherits the parent's
  peak when that is higher.)
- Everywhere: ``saved_activations_mb``, the bytes autograd saves for backward in one forward
  (``torch.autograd.graph.saved_tensors_hooks``), device-independent.

Defaults: on CUDA ``vit_base_patch16_224`` (random weights: speed does not depend on them), batch
128, bf16 autocast, 20 steps after 5 warm-up; TF32 matmuls, cuDNN autotuning and channels_last for
CNNs. On CPU ``vit_tiny_patch16_224`` at 224, batch 8, fp32, 5 steps after 1 warm-up (a minute or
two on 2 cores).

Targets are reported with PASS/FAIL beside them (never asserted): LoRA peak memory <= 0.6x full and
step time <= 0.85x full (meant for a ViT-B-sized model), merged inference <= 1.05x base for every
mergeable method, a linear-probe epoch on cached features >= 10x faster than through the frozen
backbone (``trainer.features``), LoRA >= 1,500 images/s on ViT-B/16 at 224 in bf16 (H100), and (with
``--data-pipeline``) the decoded-image loader >= 3x faster than the model consumes images.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
CHILD_TAG = "MEDPEFT_PERF_CHILD "
DEVICE_DEFAULTS = {
    "cuda": dict(backbone="vit_base_patch16_224", batch_size=128, steps=20, warmup=5, dtype="bf16"),
    "cpu": dict(backbone="vit_tiny_patch16_224", batch_size=8, steps=5, warmup=1, dtype="fp32"),
}
MEM_STEPS = 2  # the trainer's step order reaches its peak in step 2 (step 1's gradients + optimizer state live)
TARGETS = {"lora_memory_vs_full": 0.6, "lora_time_vs_full": 0.85, "merged_vs_base": 1.05,
           "linear_probe_cached_speedup": 10.0, "lora_images_per_s_h100": 1500.0, "loader_vs_model": 3.0}


@dataclass
class Bench:
    backbone: str
    img_size: int | None
    batch_size: int
    num_classes: int
    device: str
    dtype: str
    pretrained: bool
    steps: int
    warmup: int


# --------------------------------------------------------------------------------------------- setup

def setup_backends(device: str) -> None:
    """CUDA only: TF32 matmuls/convolutions and cuDNN autotuning (fixed input shapes)."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")


def autocast_for(bench: Bench) -> Callable[[], contextlib.AbstractContextManager]:
    if bench.dtype == "bf16":
        kind = torch.device(bench.device).type
        return lambda: torch.autocast(kind, dtype=torch.bfloat16)
    return contextlib.nullcontext


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def input_size(bench: Bench, warn: bool = False) -> int:
    """The input side: a ViT's fixed patch-embedding size as built, else ``--img-size`` or the
    backbone's default."""
    from adapters import create_backbone, data_config

    probe = create_backbone(bench.backbone, bench.num_classes, pretrained=False, img_size=bench.img_size)
    embed = getattr(probe, "patch_embed", None)
    fixed = getattr(embed, "img_size", None)
    if fixed is not None and not getattr(embed, "dynamic_img_size", False):
        size = int(fixed[-1] if isinstance(fixed, (tuple, list)) else fixed)
        if warn and bench.img_size and size != bench.img_size:
            print(f"NOTE: {bench.backbone} is built for {size}px inputs (create_backbone passes img_size only to "
                  f"vit_*/deit* names); measuring at {size}px", flush=True)
        return size
    return bench.img_size or int(data_config(probe)["input_size"][-1])


def build(bench: Bench, method: str | None) -> nn.Module:
    """Backbone (+ method), on the device; channels_last for CNNs on CUDA."""
    from adapters import apply_method, create_backbone, family_of

    model = create_backbone(bench.backbone, bench.num_classes, pretrained=bench.pretrained, img_size=bench.img_size)
    if method is not None:
        model = apply_method(model, method)
    model = model.to(bench.device)
    if torch.device(bench.device).type == "cuda" and family_of(model) == "cnn":
        model = model.to(memory_format=torch.channels_last)
    return model


def make_batch(bench: Bench, size: int, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(bench.batch_size, 3, size, size, generator=g)
    y = torch.randint(0, bench.num_classes, (bench.batch_size,), generator=g)
    x, y = x.to(bench.device), y.to(bench.device)
    if torch.device(bench.device).type == "cuda" and family == "cnn":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def trainer_optimizer(model: nn.Module):
    """The trainer's own AdamW (trainable parameters only, decay on >= 2-D tensors)."""
    from ..config import TrainConfig
    from ..loops.optim import build_optimizer

    cfg = TrainConfig()
    return build_optimizer(model, cfg.lr, cfg.weight_decay)


def make_train_step(model: nn.Module, bench: Bench, x: torch.Tensor, y: torch.Tensor):
    """One step exactly as trainer.loops.classify does it: forward (autocast), loss, zero_grad, backward,
    clip, step."""
    opt = trainer_optimizer(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    loss_fn = nn.CrossEntropyLoss()
    autocast = autocast_for(bench)

    def step() -> None:
        with autocast():
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()

    return step, opt


def timed(fn: Callable[[], Any], steps: int, warmup: int, device: str) -> list[float]:
    """Milliseconds of each of ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(1000 * (time.perf_counter() - t0))
    return out


def timed_round_robin(fns: dict[str, Callable[[], Any]], steps: int, warmup: int, device: str) -> dict[str, list[float]]:
    """Like :func:`timed` for several functions, interleaved call by call, so that drift in the
    machine's speed (other processes, clocks) hits them alike and their ratio stays fair."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(steps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            out[k].append(1000 * (time.perf_counter() - t0))
    return out


def infer_fn(model: nn.Module, bench: Bench, x: torch.Tensor):
    autocast = autocast_for(bench)

    def fn():
        with torch.inference_mode(), autocast():
            return model(x)

    return fn


# ------------------------------------------------------------------------------------------ memory

def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _RssSampler:
    """Fallback where VmHWM cannot be reset: sample the resident size every millisecond."""

    def __init__(self):
        import threading

        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _lazy_init_warm_up(family: str) -> None:
    """Run a throwaway training step of a tiny model of the same family, so that one-off lazy
    initialisation (thread pools, kernel libraries) is in the baseline and not in a method's peak."""
    from adapters.backbones import TINY_CNN, TINY_VIT

    tiny = Bench(backbone=TINY_CNN if family == "cnn" else TINY_VIT, img_size=None, batch_size=2, num_classes=3,
                 device="cpu", dtype="fp32", pretrained=False, steps=1, warmup=0)
    model = build(tiny, "full")
    x, y = make_batch(tiny, 32, family)
    step, _ = make_train_step(model, tiny, x, y)
    step()
    del model, step, x, y
    gc.collect()


def measure_memory(bench: Bench, method: str, family: str, steps: int) -> dict:
    """In a fresh process (one that has only imported modules): resident-memory peak of training."""
    import psutil

    torch.set_num_threads(1)
    _lazy_init_warm_up(family)
    size = input_size(bench)
    x, y = make_batch(bench, size, family)
    gc.collect()
    hwm = _reset_peak_rss() and _proc_status("VmHWM") is not None
    base = psutil.Process().memory_info().rss
    sampler = contextlib.nullcontext() if hwm else _RssSampler()
    with sampler:
        model = build(bench, method)
        step, _ = make_train_step(model, bench, x, y)
        for _ in range(steps):
            step()
    peak = _proc_status("VmHWM") if hwm else sampler.peak
    return {"method": method, "peak_rss_bytes": peak, "base_rss_bytes": base, "train_bytes": peak - base,
            "source": "VmHWM" if hwm else "psutil-sampled", "steps": steps}


def child_main(spec: dict) -> list[dict]:
    """``--_child``: measure the memory of ``spec["methods"]``. With ``fork``, this process only imports,
    then forks one fresh process per method (``jobs`` at a time): each method starts from the same
    clean, import-only state and none sees another's allocations, at the cost of one import.
    Without, it measures its single method itself."""
    from adapters import create_backbone, family_of

    from ..loops import classify  # noqa: F401 - imported before forking, like everything a method needs

    methods, steps, jobs = spec.pop("methods"), int(spec.pop("mem_steps")), int(spec.pop("jobs", 1))
    use_fork = spec.pop("fork", False) and hasattr(os, "fork")
    bench = Bench(**spec)
    family = family_of(create_backbone(bench.backbone, bench.num_classes, pretrained=False, img_size=bench.img_size))
    gc.collect()

    def safe(method: str) -> dict:
        try:
            return measure_memory(bench, method, family, steps)
        except Exception as e:  # noqa: BLE001 - reported in the table, the other methods go on
            return {"method": method, "error": f"{type(e).__name__}: {e}"}

    if not use_fork:
        return [safe(m) for m in methods]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="medpeft-perf-mem-") as tmp:
        running: dict[int, tuple[str, Path]] = {}
        queue = list(methods)
        while queue or running:
            while queue and len(running) < max(1, jobs):
                method = queue.pop(0)
                out = Path(tmp) / f"{len(results) + len(running)}.json"
                pid = os.fork()
                if pid == 0:  # the fresh per-method process
                    code = 0
                    try:
                        out.write_text(json.dumps(safe(method)))
                    except BaseException:  # noqa: BLE001
                        code = 1
                    finally:
                        os._exit(code)
                running[pid] = (method, out)
            pid, status = os.wait()
            method, out = running.pop(pid)
            try:
                results[method] = json.loads(out.read_text())
            except (OSError, ValueError):
                results[method] = {"method": method, "error": f"memory process died (status {status})"}
    return [results[m] for m in methods]


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # One thread; and allocations >= 64 KiB by mmap, returned to the OS when freed, so that the
    # resident size follows live memory instead of what malloc keeps cached.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536")
    return env


def spawn_child(bench: Bench, methods: list[str], mem_steps: int, fork: bool, jobs: int) -> list[dict]:
    spec = {**asdict(bench), "methods": methods, "mem_steps": mem_steps, "fork": fork, "jobs": jobs}
    proc = subprocess.run([sys.executable, "-m", "trainer.perf", "--_child", json.dumps(spec)], cwd=ROOT,
                          env=_child_env(), capture_output=True, text=True, timeout=3600)
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_TAG):
            return json.loads(line[len(CHILD_TAG):])
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    return [{"method": m, "error": f"memory subprocess failed (rc {proc.returncode}): {tail}"} for m in methods]


def cpu_memory(bench: Bench, methods: list[str], jobs: int, mem_steps: int, isolation: str) -> dict[str, dict]:
    """Peak training memory of each method, each in a fresh process (see :func:`child_main`)."""
    if isolation == "fork" and hasattr(os, "fork"):
        results = spawn_child(bench, methods, mem_steps, fork=True, jobs=jobs)
    else:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            results = [r for rs in pool.map(lambda m: spawn_child(bench, [m], mem_steps, False, 1), methods)
                       for r in rs]
    return {r["method"]: r for r in results}


def _release(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ measure

def saved_activation_bytes(model: nn.Module, bench: Bench, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one training forward (parameters excluded):
    the activation memory, the same on any device. PEFT saves less where frozen layers need not keep
    their inputs for weight gradients."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast_for(bench)():
        model(x)
    return sum(n for ptr, n in storages.items() if ptr not in params)


def warm_up(bench: Bench, x: torch.Tensor, y: torch.Tensor) -> None:
    """Process-level warm-up (kernel selection, thread pools, allocator) before anything is timed."""
    model = build(bench, "full").train()
    step, _ = make_train_step(model, bench, x, y)
    for _ in range(2):
        step()
    model.eval()
    for _ in range(2):
        infer_fn(model, bench, x)()
    del model, step
    _release(bench.device)


def measure_method(bench: Bench, method: str, x: torch.Tensor, y: torch.Tensor, base_infer: Callable) -> dict:
    from adapters import NotMergeable, count_params, merge_method

    cuda = torch.device(bench.device).type == "cuda"
    _release(bench.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    model = build(bench, method)
    trainable, total = count_params(model)
    model.train()
    step, opt = make_train_step(model, bench, x, y)
    ms = timed(step, bench.steps, bench.warmup, bench.device)
    out: dict[str, Any] = {"method": method, "trainable_params": trainable, "total_params": total,
                           "train_ms": statistics.median(ms), "train_ms_min": min(ms), "train_ms_all": ms,
                           "images_per_s": 1000 * bench.batch_size / statistics.median(ms)}
    if cuda:
        out["peak_bytes"] = torch.cuda.max_memory_allocated() - before
    # PEFT pays off only if frozen tensors carry no gradient and no optimizer state.
    out["frozen_with_grad"] = sum(1 for p in model.parameters() if not p.requires_grad and p.grad is not None)
    state_params = {id(p) for p in opt.state}
    out["optimizer_state_params"] = sum(p.numel() for p in model.parameters() if id(p) in state_params)
    opt.zero_grad(set_to_none=True)
    del opt, step
    _release(bench.device)
    out["saved_activations_mb"] = saved_activation_bytes(model, bench, x) / 2 ** 20
    _release(bench.device)
    model.eval()
    fns = {"base": base_infer, "unmerged": infer_fn(model, bench, x)}
    try:
        merged = merge_method(copy.deepcopy(model)).eval()
    except NotMergeable:
        merged = None
    if merged is not None:
        fns["merged"] = infer_fn(merged, bench, x)
        a, b = fns["unmerged"]().float(), fns["merged"]().float()
        out["merge_max_abs_diff"] = (a - b).abs().max().item()
    ms = timed_round_robin(fns, bench.steps, bench.warmup, bench.device)
    med = {k: statistics.median(v) for k, v in ms.items()}
    out.update(infer_ms=med["unmerged"], mergeable=merged is not None, merged_ms=med.get("merged"),
               base_infer_ms=med["base"], infer_ms_all=ms["unmerged"], base_infer_ms_all=ms["base"])
    del merged, fns
    del model
    _release(bench.device)
    return out


def linear_probe_epoch(bench: Bench, x: torch.Tensor, y: torch.Tensor, batches: int) -> dict:
    """Linear-probe epoch through the frozen backbone vs on cached features (trainer.loops.features)."""
    from ..loops.features import compare_epoch_times, head_splits

    model = build(bench, "linear_probe")
    if not head_splits(model, tuple(x.shape[1:]), device=bench.device):
        return {"error": "this backbone's head cannot be split off: no cached-feature path"}
    images = x.repeat(batches, 1, 1, 1)
    labels = y.repeat(batches)
    out = compare_epoch_times(model, images, labels, bench.batch_size, bench.device, autocast_for(bench))
    del model
    _release(bench.device)
    return out


def ratio(a, b) -> float | None:
    if a is None or b is None or not b or not math.isfinite(a) or not math.isfinite(b):
        return None
    return a / b


def check(name: str, value, op: str, target: float, note: str = "") -> dict:
    ok = None if value is None else (value <= target if op == "<=" else value >= target)
    return {"name": name, "value": value, "op": op, "target": target, "pass": ok, "note": note}


# ------------------------------------------------------------------------------------------ reports

def _fmt(v, spec: str, na: str = "n/a") -> str:
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
    rows = [["base (no method)", "-", "-", "-", "-", "-", _fmt(result["base"]["infer_ms"], ".1f"), "-", "1.00"]]
    for r in result["methods"]:
        if "error" in r and "train_ms" not in r:
            rows.append([r["method"], "error", r["error"][:60], "", "", "", "", "", ""])
            continue
        rt = r["ratios"]
        rows.append([r["method"], f"{r['trainable_params']:,}", f"{r['train_ms']:.1f}",
                     _fmt(rt["train_time_vs_full"], ".2f"), _fmt(r.get("peak_mb"), ".0f"),
                     _fmt(rt["peak_memory_vs_full"], ".2f"), f"{r['infer_ms']:.1f}", _fmt(r["merged_ms"], ".1f"),
                     _fmt(rt["merged_vs_base"] if r["mergeable"] else rt["infer_vs_base"], ".2f")])
    widths = [max(len(str(row[i])) for row in [cols] + rows) for i in range(len(cols))]
    line = lambda row: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(row, widths)))
    out = [line(cols), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    out.append("x base: merged latency / base latency for mergeable methods, else unmerged / base.")
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
    _release(bench.device)
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
    for r in rows:
        if r.get("mergeable"):
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


def run_data_pipeline(args, bench: Bench) -> dict:
    """Images/s through the trainer's own train loader (CachedImageDataset + DataLoader + train
    transform, from a synthetic decoded-image cache) vs images/s of a training step."""
    import types

    import numpy as np

    from adapters import create_backbone, family_of

    from ..data.transforms import cache_size_for
    from ..loops.classify import build_loaders, model_data_config
    from ..config import TrainConfig

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


# ------------------------------------------------------------------------------------------------ CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.perf", description=(
        "Training step time, peak memory and inference latency of every PEFT method on one backbone, "
        "with ratios to full fine-tuning and to the base model, all from one run."))
    p.add_argument("--backbone", help="timm name (default: vit_base_patch16_224 on CUDA, vit_tiny_patch16_224 on CPU)")
    p.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m],
                   help="comma-separated (default: every method for the backbone's family); full is always added")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--img-size", type=int, help="input side (default: the backbone's)")
    p.add_argument("--num-classes", type=int, default=3)
    p.add_argument("--steps", type=int, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, help="untimed warm-up steps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bf16", "fp32"], help="bf16: autocast (default on CUDA)")
    p.add_argument("--pretrained", action="store_true", help="load pretrained weights (timing does not need them)")
    p.add_argument("--threads", type=int, help="CPU: torch threads for the timings (default: torch's); 1 gives "
                   "steadier figures on a machine shared with other work")
    p.add_argument("--mem-jobs", type=int, default=2, help="CPU: memory processes at a time")
    p.add_argument("--mem-isolation", choices=["fork", "spawn"], default="fork" if hasattr(os, "fork") else "spawn",
                   help="CPU: fork: one spawned interpreter imports once and forks a fresh process per method; "
                        "spawn: a new interpreter per method (slower: one import each)")
    p.add_argument("--json", dest="json_path", help="write the results here")
    p.add_argument("--data-pipeline", action="store_true",
                   help="measure the decoded-image loader's images/s against the model's")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="--data-pipeline: loader workers")
    p.add_argument("--cache-images", type=int, default=256, help="--data-pipeline: synthetic cache rows")
    p.add_argument("--loader-batches", type=int, default=20, help="--data-pipeline: batches timed")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args._child:
        result = child_main(json.loads(args._child))
        print(CHILD_TAG + json.dumps(result), flush=True)
        return 0
    from adapters import METHODS, create_backbone, family_of, methods_for

    device = args.device
    kind = torch.device(device).type
    d = DEVICE_DEFAULTS["cuda" if kind == "cuda" else "cpu"]
    bench = Bench(backbone=args.backbone or d["backbone"], img_size=args.img_size,
                  batch_size=args.batch_size or d["batch_size"], num_classes=args.num_classes, device=device,
                  dtype=args.dtype or d["dtype"], pretrained=args.pretrained,
                  steps=args.steps if args.steps is not None else d["steps"],
                  warmup=args.warmup if args.warmup is not None else d["warmup"])
    if bench.steps < 1:
        print("error: --steps must be at least 1", file=sys.stderr)
        return 2
    setup_backends(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"medpeft perf: {bench.backbone} on {device} ({bench.dtype}), batch {bench.batch_size}", flush=True)
    if args.data_pipeline:
        result = run_data_pipeline(args, bench)
        print(f"loader  {result['loader_images_per_s']:10.1f} images/s  ({args.workers} workers)")
        print(f"model   {result['model_images_per_s']:10.1f} images/s  ({result['method']} training step "
              f"{result['model_train_ms']:.1f} ms)")
        print(f"ratio   {result['ratio']:10.2f}x")
    else:
        family = family_of(create_backbone(bench.backbone, bench.num_classes, pretrained=False,
                                           img_size=bench.img_size))
        available = [m.name for m in methods_for(family)]
        methods = args.methods or available
        unknown = [m for m in methods if m not in METHODS]
        wrong = [m for m in methods if m in METHODS and m not in available]
        if unknown or wrong:
            print(f"error: {'unknown' if unknown else 'not for ' + family + ' backbones'}: "
                  f"{', '.join(unknown or wrong)}; methods for {family}: {', '.join(available)}", file=sys.stderr)
            return 2
        methods = ["full"] + [m for m in dict.fromkeys(methods) if m != "full"]  # the reference, first
        t0 = time.time()
        result = run_methods(args, bench, methods)
        result["wall_s"] = time.time() - t0
        print()
        print(format_table(result))
        lp = result["linear_probe_cached_features"]
        if lp and "speedup" in lp:
            print(f"linear probe, one epoch of {lp['images']} images: frozen backbone {1000 * lp['backbone_s']:.1f} ms, "
                  f"cached features {1000 * lp['features_s']:.2f} ms ({lp['speedup']:.0f}x; features computed "
                  f"once in {1000 * lp['extract_s']:.1f} ms)")
        load = result["environment"].get("loadavg")
        if kind == "cpu" and load and max(load[:2]) > 0.75 * (os.cpu_count() or 1):
            print(f"NOTE: load average {load[0]:.1f}/{load[1]:.1f} on {os.cpu_count()} CPUs while timing: other "
                  f"processes competed for the CPU, so step times are noisy (per-step times and minima are in "
                  f"the JSON); memory figures are unaffected.")
        bad = [r["method"] for r in result["methods"] if r.get("frozen_with_grad")]
        if bad:
            print(f"WARNING: frozen parameters received gradients in: {', '.join(bad)}")
    print(format_targets(result["targets"]))
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(json_safe(result), indent=2, allow_nan=False, default=str))
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
