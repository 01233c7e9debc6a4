"""``python -m trainer.perf --vs-baseline``: training epochs of MedPEFT's trainer against the loop a user
would write by hand from the timm and peft docs (``benchmarks/baseline_timm_peft.py``), on the same
images, model, method, batch size and image count.

- The images: a synthetic ImageFolder written on the fly (``--baseline-images`` JPEGs of 600x450,
  the size of a HAM10000 dermoscopy image; smooth random content, so they compress and decode like
  photographs), ``--num-classes`` class folders.
- The baseline: a fresh ``python benchmarks/baseline_timm_peft.py`` process: torchvision
  ``ImageFolder`` (PIL decode and timm's training transform every epoch), ``timm.create_model`` + the
  same method, plain fp32 AdamW loop.
- The trainer: a fresh ``python -m trainer.perf --_epochs`` process running the trainer's own parts
  (:mod:`trainer.loops.classify`'s image cache and ``build_loaders``, :mod:`trainer.loops.precision`'s
  runtime - precision, channels_last, fused AdamW, pinned non-blocking copies -, accelerate and
  ``train_step``) over every image as the training split. The image cache is built once (decoding
  each image once, as a real run does before its first epoch); its time is reported apart
  (``cache_build_s``), not in the epochs.
- Both: ``--baseline-epochs`` epochs, the first a warm-up (not timed); images/s over the others, data
  loading included; the same loader workers (``--workers``). Peak memory: on CUDA
  ``max_memory_allocated`` of each process; on CPU each process's peak resident size above its size
  just before the model was built (loader workers not counted), as the baseline script measures it.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .bench import Bench, ROOT, TARGETS
from .memory import child_env, proc_status, reset_peak_rss, timed_epochs

EPOCHS_TAG = "MEDPEFT_PERF_EPOCHS "
BASELINE_SCRIPT = ROOT / "benchmarks" / "baseline_timm_peft.py"


def synthetic_image_folder(folder: Path, images: int, classes: int, size: tuple[int, int] = (600, 450),
                           seed: int = 0) -> Path:
    """``images`` JPEGs in ``classes`` class folders: smooth random colour fields plus noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    for c in range(classes):
        (folder / f"class_{c}").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        low = rng.integers(0, 256, size=(9, 12, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize(size, Image.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(size[1], size[0], 3))
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"class_{i % classes}" / f"{i:05d}.jpg",
                                                                quality=90)
    return folder


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def trainer_epochs(spec: dict) -> dict:
    """``--_epochs``: the trainer's own data path, runtime and step over ``spec["folder"]``."""
    from adapters import apply_method, count_params, create_backbone

    from ...config import TrainConfig
    from ...data import build_image_cache, load_dataset
    from ...data.transforms import cache_size_for
    from ...loops.classify import build_loaders, model_data_config
    from ...loops.optim import build_optimizer, build_scheduler, make_accelerator, train_step
    from ...loops.precision import config_runtime, model_runtime, prepare_model

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cfg = TrainConfig(method=spec["method"], dataset="imagefolder", data_dir=spec["folder"],
                      backbone=spec["backbone"], pretrained=False, img_size=spec.get("img_size"),
                      batch_size=spec["batch_size"], num_workers=spec["workers"], epochs=spec["epochs"],
                      mixed_precision=spec["precision"], compile=spec.get("compile", False),
                      grad_checkpointing=spec.get("grad_checkpointing", False), output_dir=spec["cache_dir"],
                      warmup_epochs=0.0).validate()
    rt = config_runtime(cfg)
    accelerator = make_accelerator(rt.precision, non_blocking=rt.non_blocking)
    cuda = rt.cuda
    index = load_dataset("imagefolder", cfg.data_dir)
    with torch.device("meta"):
        probe = create_backbone(cfg.backbone, len(index.class_names), pretrained=False, img_size=cfg.img_size)
    dcfg = model_data_config(probe, cfg)
    t0 = time.perf_counter()
    cache = build_image_cache(index, spec["cache_dir"], cache_size_for(dcfg), workers=max(1, cfg.num_workers),
                              progress=False)
    cache_s = time.perf_counter() - t0
    index = cache.index
    import numpy as np

    everything = np.arange(len(index.labels))
    splits = {"train": everything, "val": everything[:1], "test": everything[:1]}
    train_dl, _, _ = build_loaders(cfg, index, cache, dcfg, splits, seed=0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()
    rss_before = proc_status("VmRSS")
    model = create_backbone(cfg.backbone, len(index.class_names), pretrained=False, img_size=cfg.img_size)
    model = apply_method(model, cfg.method, **cfg.hparams)
    model = prepare_model(model, model_runtime(cfg, model))
    trainable, total = count_params(model)
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=rt.fused_optimizer)
    sched = build_scheduler(opt, cfg.epochs, len(train_dl), cfg.warmup_epochs)
    model, opt, train_dl, sched = accelerator.prepare(model, opt, train_dl, sched)
    loss_fn = torch.nn.CrossEntropyLoss()
    epoch_s, images = [], []
    for _ in range(cfg.epochs):
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y in train_dl:
            train_step(model, x, y, loss_fn, opt, sched, grad_clip=cfg.grad_clip, accelerator=accelerator)
            seen += len(y)
        _sync(cuda)
        epoch_s.append(time.perf_counter() - t0)
        images.append(seen)
    return {**timed_epochs(epoch_s, images, cuda, rss_before), "cache_build_s": cache_s, "trainable_params": trainable, "total_params": total,
            "runtime": rt.record(), "input_size": list(dcfg["input_size"])}


def _run(cmd: list[str], tag: str | None, timeout: float) -> dict:
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(threads=None), capture_output=True, text=True,
                          timeout=timeout)
    if tag is not None:
        for line in proc.stdout.splitlines():
            if line.startswith(tag):
                return json.loads(line[len(tag):])
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
    return {"error": f"{Path(cmd[1]).name if len(cmd) > 1 else cmd[0]} failed (rc {proc.returncode}): {tail}"}


def run_vs_baseline(args, bench: Bench, method: str = "lora") -> dict:
    """Both sides in fresh processes, one after the other, on one synthetic folder."""
    precision = "bf16" if bench.dtype == "bf16" else "no"  # the run's --dtype, for the trainer side too
    cuda = torch.device(bench.device).type == "cuda"
    n = max(args.baseline_images, 2 * bench.batch_size)
    with tempfile.TemporaryDirectory(prefix="medpeft-perf-baseline-") as tmp:
        t0 = time.time()
        folder = synthetic_image_folder(Path(tmp) / "images", n, bench.num_classes)
        print(f"vs-baseline: {n} synthetic 600x450 JPEGs written in {time.time() - t0:.1f}s; {method}, "
              f"batch {bench.batch_size}, {args.baseline_epochs} epochs (first untimed), {args.workers} workers",
              flush=True)
        spec = {"folder": str(folder), "cache_dir": str(Path(tmp) / "cache"), "method": method,
                "backbone": bench.backbone, "img_size": bench.img_size, "batch_size": bench.batch_size,
                "workers": args.workers, "epochs": args.baseline_epochs, "precision": precision,
                "threads": args.threads}
        trainer = _run([sys.executable, "-m", "trainer.perf", "--_epochs", json.dumps(spec)], EPOCHS_TAG, 3600)
        print(f"  trainer   {trainer.get('images_per_s', float('nan')):9.1f} images/s"
              + (f"  ({trainer['error']})" if "error" in trainer else ""), flush=True)
        out = Path(tmp) / "baseline.json"
        cmd = [sys.executable, str(BASELINE_SCRIPT), "--folder", str(folder), "--backbone", bench.backbone,
               "--method", method, "--batch-size", str(bench.batch_size), "--epochs", str(args.baseline_epochs),
               "--num-workers", str(args.workers), "--device", bench.device, "--json", str(out)]
        if bench.img_size:
            cmd += ["--img-size", str(bench.img_size)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        baseline = _run(cmd, None, 3600)
        if out.exists():  # the script's own JSON; else the error from its output
            baseline = json.loads(out.read_text())
        print(f"  baseline  {baseline.get('images_per_s', float('nan')):9.1f} images/s"
              + (f"  ({baseline['error']})" if "error" in baseline else ""), flush=True)
    return {"method": method, "images": n, "epochs": args.baseline_epochs, "workers": args.workers,
            **compare(trainer, baseline, cuda, f"{n} images, batch {bench.batch_size}")}


def compare(trainer: dict, baseline: dict, cuda: bool, what: str = "") -> dict:
    """Ratios of the two sides (epoch time = inverse images/s; peak memory) and the PASS/FAIL target:
    trainer epoch time <= 0.5x the baseline's on a GPU, <= 0.9x on CPU."""
    from .report import check

    ips_t, ips_b = trainer.get("images_per_s"), baseline.get("images_per_s")
    time_ratio = ips_b / ips_t if ips_t and ips_b else None  # epoch time: trainer / baseline
    mem_t, mem_b = trainer.get("peak_mem_bytes"), baseline.get("peak_mem_bytes")
    limit = TARGETS["trainer_vs_baseline_gpu" if cuda else "trainer_vs_baseline_cpu"]
    precision = _precision_word((trainer.get("runtime") or {}).get("precision", "?"))
    note = f"{'GPU' if cuda else 'CPU'} target; trainer {precision} vs baseline fp32" + (f", {what}" if what else "")
    return {"trainer": trainer, "baseline": baseline, "epoch_time_ratio": time_ratio,
            "speedup": 1 / time_ratio if time_ratio else None,
            "peak_memory_ratio": mem_t / mem_b if mem_t and mem_b else None,
            "targets": [check("trainer epoch time vs hand-written timm+peft loop", time_ratio, "<=", limit, note)]}


def _precision_word(p: str) -> str:
    return "fp32" if p == "no" else p


def format_vs_baseline(r: dict) -> str:
    def mb(v):
        return "n/a" if v is None else f"{v / 2 ** 20:.0f} MB"

    t, b = r["trainer"], r["baseline"]
    lines = [f"vs hand-written timm+peft loop ({r['method']}, {r['images']} images, {r['epochs']} epochs, "
             f"{r['workers']} workers):"]
    for name, side in (("trainer ", t), ("baseline", b)):
        if "error" in side:
            lines.append(f"  {name} error: {side['error'][:200]}")
            continue
        extra = (f", {_precision_word(side['runtime']['precision'])}/{side['runtime']['memory_format']}"
                 f"{'/fused' if side['runtime']['fused_optimizer'] else ''}; image cache built once in "
                 f"{side['cache_build_s']:.1f}s") if "runtime" in side else f", {side.get('precision', 'fp32')}"
        lines.append(f"  {name}  {side['images_per_s']:9.1f} images/s  peak memory {mb(side.get('peak_mem_bytes'))}"
                     f"{extra}")
    if r["epoch_time_ratio"] is not None:
        lines.append(f"  epoch time trainer/baseline {r['epoch_time_ratio']:.2f}x ({r['speedup']:.2f}x faster); "
                     f"peak memory trainer/baseline "
                     f"{'n/a' if r['peak_memory_ratio'] is None else format(r['peak_memory_ratio'], '.2f') + 'x'}")
    return "\n".join(lines)
