"""Peak training memory per method on CPU, each method in a fresh process (``--_child``); see the
package docstring."""
from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from .bench import Bench, CHILD_TAG, ROOT, build, input_size, make_batch, make_train_step


# ------------------------------------------------------------------------------------------ memory

def proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def timed_epochs(epoch_s: list[float], images: list[int], cuda: bool, rss_before: int | None) -> dict:
    """Throughput and peak memory of a few training epochs, as both sides of ``--vs-baseline`` report
    them: images/s over the epochs after the first (a warm-up) when there are two or more; peak memory
    from CUDA's allocator, or on CPU this process's peak resident size above ``rss_before``."""
    import torch

    timed = slice(1, None) if len(epoch_s) >= 2 else slice(None)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        hwm = proc_status("VmHWM")
        peak = hwm - rss_before if hwm is not None and rss_before is not None else None
    return {"images_per_s": sum(images[timed]) / sum(epoch_s[timed]), "peak_mem_bytes": peak,
            "epoch_s": list(epoch_s), "images_per_epoch": images[0], "timed_epochs": len(epoch_s[timed])}


def reset_peak_rss() -> bool:
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
    hwm = reset_peak_rss() and proc_status("VmHWM") is not None
    base = psutil.Process().memory_info().rss
    sampler = contextlib.nullcontext() if hwm else _RssSampler()
    with sampler:
        model = build(bench, method)
        step, _ = make_train_step(model, bench, x, y)
        for _ in range(steps):
            step()
    peak = proc_status("VmHWM") if hwm else sampler.peak
    return {"method": method, "peak_rss_bytes": peak, "base_rss_bytes": base, "train_bytes": peak - base,
            "source": "VmHWM" if hwm else "psutil-sampled", "steps": steps}


def child_main(spec: dict) -> list[dict]:
    """``--_child``: measure the memory of ``spec["methods"]``. With ``fork``, this process only imports,
    then forks one fresh process per method (``jobs`` at a time): each method starts from the same
    clean, import-only state and none sees another's allocations, at the cost of one import.
    Without, it measures its single method itself."""
    from adapters import create_backbone, family_of

    from ...loops import classify  # noqa: F401 - imported before forking, like everything a method needs

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


def child_env(threads: int | None = 1) -> dict:
    """The environment of a perf subprocess: the repository importable; for memory processes
    (``threads=1``) one thread, and allocations >= 64 KiB by mmap, returned to the OS when freed, so
    that the resident size follows live memory instead of what malloc keeps cached. ``threads=None``:
    the environment as it is (timed processes)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MALLOC_MMAP_THRESHOLD_="65536")
    return env


def spawn_child(bench: Bench, methods: list[str], mem_steps: int, fork: bool, jobs: int) -> list[dict]:
    spec = {**asdict(bench), "methods": methods, "mem_steps": mem_steps, "fork": fork, "jobs": jobs}
    proc = subprocess.run([sys.executable, "-m", "trainer.perf", "--_child", json.dumps(spec)], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=3600)
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


def release_memory(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
