"""Speed and memory of every PEFT method on one backbone, measured in one run.

    python -m trainer.perf                                   # defaults for the device (below)
    python -m trainer.perf --backbone vit_base_patch16_224 --batch-size 128 --dtype bf16 --json perf.json
    python -m trainer.perf --methods full,lora,linear_probe --steps 10
    python -m trainer.perf --data-pipeline             # loader images/s vs the model's images/s
    python -m trainer.perf --vs-baseline               # + the trainer's epochs vs a hand-written timm+peft loop
    python -m trainer.perf --serving --adapters 8      # N adapters on one shared base vs N deep copies (.serving)

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

Methods: every method for the backbone's family by default, plus ``lora+gc`` (LoRA with gradient
checkpointing); ``full`` is always measured, first. ``--vs-baseline`` adds training epochs of the
trainer against ``benchmarks/baseline_timm_peft.py`` on a synthetic image folder
(:mod:`trainer.study.perf.baseline`), in the same run.

Targets are reported with PASS/FAIL beside them (never asserted): LoRA peak memory <= 0.6x full and
step time <= 0.85x full (meant for a ViT-B-sized model), LoRA with gradient checkpointing <= 0.35x
full's peak memory and SSF <= 1.0x (stated for ViT-B/16 at batch 64; elsewhere the output says where
it measured), merged inference <= 1.05x base for every mergeable method, (``--vs-baseline``) the
trainer's epoch time <= 0.5x the hand-written loop's on a GPU and <= 0.9x on CPU, a linear-probe
epoch on cached features >= 10x faster than through the frozen backbone (``trainer.features``),
LoRA >= 1,500 images/s on ViT-B/16 at 224 in bf16 (H100), and (with ``--data-pipeline``) the
decoded-image loader >= 3x faster than the model consumes images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from .baseline import EPOCHS_TAG, format_vs_baseline, run_vs_baseline, trainer_epochs
from .bench import GC, Bench, CHILD_TAG, DEVICE_DEFAULTS, setup_backends, split_variant
from .memory import child_main
from .modes import run_data_pipeline, run_methods
from .report import format_table, format_targets, json_safe


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
    p.add_argument("--vs-baseline", action="store_true",
                   help="also time training epochs of the trainer against benchmarks/baseline_timm_peft.py "
                        "(hand-written timm+peft loop) on a synthetic image folder")
    p.add_argument("--baseline-method", default="lora", help="--vs-baseline: the method both sides train")
    p.add_argument("--baseline-images", type=int, help="--vs-baseline: synthetic images (default: 2048 on CUDA, "
                   "8 batches on CPU)")
    p.add_argument("--baseline-epochs", type=int, default=3, help="--vs-baseline: epochs (the first untimed)")
    p.add_argument("--serving", action="store_true",
                   help="N adapters of mixed methods on one shared base vs N deep copies: memory, switch time, "
                        "first load (trainer.study.perf.serving)")
    p.add_argument("--adapters", type=int, default=8, help="--serving: how many adapters (default 8)")
    p.add_argument("--catalog", action="store_true",
                   help="every method of the backbone's family at a glance: trainable params, adapter file size, "
                        "memory / step time / merged latency vs full fine-tuning; Markdown, CSV, JSON and a Pareto "
                        "plot beside --json (trainer.study.perf.catalog)")
    p.add_argument("--scores", help="--catalog: a CSV of method,score to plot the Pareto front on score instead")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_epochs", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args._child:
        result = child_main(json.loads(args._child))
        print(CHILD_TAG + json.dumps(result), flush=True)
        return 0
    if args._epochs:
        print(EPOCHS_TAG + json.dumps(trainer_epochs(json.loads(args._epochs))), flush=True)
        return 0
    if args.serving:
        return serving_main(args)
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
    if args.vs_baseline and args.baseline_epochs < 1:
        print("error: --baseline-epochs must be at least 1", file=sys.stderr)
        return 2
    if args.baseline_images is None:
        args.baseline_images = 2048 if kind == "cuda" else 8 * bench.batch_size
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
        methods = args.methods or available + (["lora" + GC] if "lora" in available else [])
        bases = [split_variant(m)[0] for m in methods]
        unknown = [m for m in bases if m not in METHODS]
        wrong = [m for m in bases if m in METHODS and m not in available]
        if unknown or wrong:
            print(f"error: {'unknown' if unknown else 'not for ' + family + ' backbones'}: "
                  f"{', '.join(unknown or wrong)}; methods for {family}: {', '.join(available)}", file=sys.stderr)
            return 2
        if args.catalog and not args.methods:
            methods = available  # every method of the family (no +gc variants)
        methods = ["full"] + [m for m in dict.fromkeys(methods) if m != "full"]  # the reference, first
        t0 = time.time()
        if args.catalog:
            from .catalog import markdown, run_catalog

            result = run_catalog(args, bench, methods)
            print()
            print(markdown(result))
        else:
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
        if args.vs_baseline:
            vs = run_vs_baseline(args, bench, args.baseline_method)
            result["vs_baseline"] = vs
            result["targets"] += vs["targets"]
            print(format_vs_baseline(vs))
            result["wall_s"] = time.time() - t0
    print(format_targets(result["targets"]))
    write_json(args, result)
    return 0


def write_json(args, result: dict) -> None:
    """``--json F``: the measurements (and, for --catalog, its table, CSV and Pareto plot beside it)."""
    if not args.json_path:
        return
    Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_path).write_text(json.dumps(json_safe(result), indent=2, allow_nan=False, default=str))
    if args.catalog and result.get("mode") == "catalog":
        from .catalog import write_outputs

        print("wrote " + ", ".join(str(p) for p in [args.json_path, *write_outputs(result, args.json_path,
                                                                                 args.scores)]))
    print(f"wrote {args.json_path}")


def serving_main(args) -> int:
    from .serving import format_serving, run_serving

    if args.adapters < 1:
        print("error: --adapters must be at least 1", file=sys.stderr)
        return 2
    backbone = args.backbone or "vit_base_patch16_224"
    print(f"medpeft perf --serving: {args.adapters} adapters on {backbone} ({args.device}, random weights)", flush=True)
    try:
        result = run_serving(backbone, args.adapters, device=args.device, num_classes=args.num_classes,
                             img_size=args.img_size, reps=args.steps or 5)
    except Exception as e:  # noqa: BLE001 - a one-line error, not a traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(format_serving(result))
    write_json(args, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
