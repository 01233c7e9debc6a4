"""``python -m trainer.perf --serving``: N adapters of mixed methods on one shared frozen base
(:mod:`trainer.infer.serving`) against N deep copies of the base, measured in one process.

    python -m trainer.perf --serving --backbone vit_base_patch16_224 --adapters 8 --json serving.json

Adapters: ``--adapters`` N, cycling through a mix of methods for the backbone's family (on a ViT: LoRA r4,
LoRA r16, BitFit, SSF, AdaptFormer, VPT-deep, LayerNorm, DoRA: the zoo of the issue; on a CNN: LoRA, BitFit,
SSF, BatchNorm, TSA, DoRA, linear probe), each with random trained tensors, saved with
:func:`adapters.io.save_adapter` to a temporary folder on random (seeded) base weights.

Figures:
- memory: the bytes of every tensor the server holds (bases, structures' private slots, adapters' own
  tensors; exact, device-independent) once the first adapter is loaded and once all N are, against the
  same count for N deep copies (each built as the old Predictor did: ``deepcopy(base)``, method applied,
  tensors loaded; built and measured one at a time). On CUDA also ``memory_allocated`` deltas; on CPU the
  process's resident-set growth, for the record (the allocator makes it noisy).
- switch: putting an adapter's tensors into its structure's slots (forced, the worst case: the slots held
  another adapter), per adapter, against a batch-1 forward pass of that adapter (medians).
- first load: the first adapter (base created, structure built, tensors read) and the later loads.

Targets (PASS/FAIL, never asserted): N adapters add <= 0.5x one base's memory once the first is loaded;
a switch <= 0.1x a forward pass (the largest adapter's switch against its own forward).
"""
from __future__ import annotations

import copy
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .memory import proc_status
from .report import format_targets

VIT_MIX = [("lora", {"rank": 4, "alpha": 4}), ("lora", {"rank": 16, "alpha": 16}), ("bitfit", {}), ("ssf", {}),
           ("adaptformer", {}), ("vpt_deep", {}), ("layernorm", {}), ("dora", {})]
CNN_MIX = [("lora", {}), ("bitfit", {}), ("ssf", {}), ("batchnorm", {}), ("tsa", {}), ("dora", {}),
           ("linear_probe", {})]
TARGET_ADDED_VS_BASE = 0.5
TARGET_SWITCH_VS_FORWARD = 0.1


def method_mix(family: str, n: int) -> list[tuple[str, dict]]:
    """``n`` (method, hyper-parameters) pairs cycling through the family's mix (registered methods only)."""
    from adapters import METHODS, methods_for

    mix = [(m, hp) for m, hp in (VIT_MIX if family == "vit" else CNN_MIX) if m in METHODS]
    mix = mix or [(m.name, {}) for m in methods_for(family) if m.name != "full"]
    return [mix[i % len(mix)] for i in range(n)]


def make_zoo(folder: Path, backbone: str, n: int, num_classes: int, img_size: int | None) -> list[Path]:
    """``n`` adapters of mixed methods on one random-weight base (built once; each method applied to an
    aliasing copy of it), trained tensors drawn at random."""
    from adapters import create_backbone, data_config, family_of
    from adapters.io import AdapterConfig, apply_method, save_adapter
    from trainer.infer.structures import aliasing_copy

    base = create_backbone(backbone, num_classes, pretrained=False, img_size=img_size).eval()
    family = family_of(base)
    out = []
    for i, (method, hp) in enumerate(method_mix(family, n)):
        torch.manual_seed(1000 + i)
        model = apply_method(aliasing_copy(base), method, **hp)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.data = p.data + 0.02 * torch.randn_like(p)  # a new tensor: the base stays as it was
        cfg = AdapterConfig(method=method, backbone=backbone, num_classes=num_classes,
                            class_names=[f"class {c}" for c in range(num_classes)], data_config=data_config(model),
                            img_size=img_size, pretrained=False, dataset="synthetic", temperature=1.5)
        out.append(save_adapter(model, folder / f"{i:02d}-{method}", cfg))
        del model
    return out


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def server_bytes(server) -> int:
    """Every distinct storage the server holds (bases, structures, adapters, merged copies)."""
    tensors = []
    for b in server.bases.values():
        tensors += list(b.model.parameters()) + list(b.model.buffers())
        for s in b.structures.values():
            tensors += list(s.model.parameters()) + list(s.model.buffers())
    for a in server.adapters.values():
        tensors += list(a.tensors.values())
    return _storage_bytes(tensors)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn, device, reps: int) -> float:
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def run_serving(backbone: str, n: int, device: str = "cpu", num_classes: int = 3, img_size: int | None = None,
                reps: int = 5) -> dict:
    from adapters import create_backbone
    from adapters.io import load_adapter_weights, read_config
    from adapters.io import apply_method
    from trainer.infer.serving import AdapterServer

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="medpeft-serving-") as tmp:
        t0 = time.perf_counter()
        folders = make_zoo(Path(tmp), backbone, n, num_classes, img_size)
        zoo_s = time.perf_counter() - t0
        gc.collect()

        def create(cfg):
            return create_backbone(cfg.backbone, cfg.num_classes, pretrained=False, img_size=cfg.img_size)

        server = AdapterServer(create, lambda cfg: (cfg.backbone, cfg.img_size, cfg.num_classes), device=dev)
        rss0 = proc_status("VmRSS")
        alloc0 = torch.cuda.memory_allocated(dev) if cuda else None
        loads, served = [], []
        for f in folders:
            t0 = time.perf_counter()
            served.append(server.load(f))
            _sync(dev)
            loads.append(time.perf_counter() - t0)
            if len(served) == 1:
                first_bytes = server_bytes(server)
                rss1 = proc_status("VmRSS")
                alloc1 = torch.cuda.memory_allocated(dev) if cuda else None
        all_bytes = server_bytes(server)
        gc.collect()
        rss_n = proc_status("VmRSS")
        alloc_n = torch.cuda.memory_allocated(dev) if cuda else None
        base_bytes = next(iter(server.bases.values())).bytes
        size = served[0].config.data_config["input_size"]
        x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0)).to(dev)
        rows = []
        for s in served:
            for _ in range(2):  # warm-up (first calls allocate and pick kernels)
                server.forward(s, x)
            fwd = _median_ms(lambda: server.forward(s, x), dev, reps)

            def switch(s=s):
                with s.base.lock:
                    s.structure.active = None  # forced: the slots held another adapter
                    server.activate(s)
            sw = _median_ms(switch, dev, reps)
            rows.append({"adapter": s.folder.name, "method": s.config.method, "hparams": s.config.hparams,
                         "adapter_bytes": s.bytes, "forward_ms": fwd, "switch_ms": sw,
                         "switch_vs_forward": sw / fwd if fwd else None, "load_s": loads[len(rows)]})
        # the zoo cycle as requests see it: each adapter after the previous one
        cycle = []
        for _ in range(reps):
            for s in served:
                _sync(dev)
                t0 = time.perf_counter()
                with s.base.lock:
                    server.activate(s)
                _sync(dev)
                cycle.append(1000 * (time.perf_counter() - t0))
        # the same adapters as deep copies (the old Predictor), built and measured one at a time
        base = next(iter(server.bases.values())).model
        copy_bytes = []
        for f in folders:
            cfg = read_config(f)
            model = apply_method(copy.deepcopy(base), cfg.method, **cfg.hparams)
            load_adapter_weights(model, f / "adapter_model.safetensors")
            copy_bytes.append(_storage_bytes(list(model.parameters()) + list(model.buffers())))
            del model
        gc.collect()
    added = all_bytes - first_bytes
    copies = sum(copy_bytes)
    worst = max(rows, key=lambda r: r["switch_vs_forward"] or 0)
    mb = 2 ** 20
    result = {
        "backbone": backbone, "adapters": n, "device": str(dev), "num_classes": num_classes, "zoo_build_s": zoo_s,
        "base_bytes": base_bytes, "first_adapter_bytes": first_bytes, "all_adapters_bytes": all_bytes,
        "added_after_first_bytes": added, "added_vs_base": added / base_bytes,
        "deep_copies_bytes": copies, "shared_vs_copies": all_bytes / copies,
        "deep_copies_added_vs_base": (copies - copy_bytes[0]) / base_bytes,
        "rss_bytes": {"before": rss0, "first": rss1, "all": rss_n},
        "cuda_allocated_bytes": {"before": alloc0, "first": alloc1, "all": alloc_n} if cuda else None,
        "first_load_s": loads[0], "later_load_s_median": statistics.median(loads[1:]) if n > 1 else None,
        "cycle_switch_ms_median": statistics.median(cycle), "worst_switch": worst, "per_adapter": rows,
        "memory_by_kind_bytes": server.memory(),
    }
    result["targets"] = [
        {"name": f"{n} adapters add <= {TARGET_ADDED_VS_BASE}x one base once the first is loaded",
         "value": result["added_vs_base"], "op": "<=", "target": TARGET_ADDED_VS_BASE,
         "pass": result["added_vs_base"] <= TARGET_ADDED_VS_BASE,
         "note": f"({added / mb:.1f} MB on a {base_bytes / mb:.0f} MB base; deep copies add "
                 f"{result['deep_copies_added_vs_base']:.2f}x)"},
        {"name": "a switch (forced slot copy) <= 0.1x a forward pass (worst adapter)",
         "value": worst["switch_vs_forward"], "op": "<=", "target": TARGET_SWITCH_VS_FORWARD,
         "pass": worst["switch_vs_forward"] is not None and worst["switch_vs_forward"] <= TARGET_SWITCH_VS_FORWARD,
         "note": f"({worst['method']}: {worst['switch_ms']:.3f} ms vs {worst['forward_ms']:.1f} ms, batch 1)"},
    ]
    return result


def format_serving(r: dict) -> str:
    mb = 2 ** 20
    lines = [f"{'adapter':22s} {'method':12s} {'own MB':>8s} {'forward ms':>11s} {'switch ms':>10s} {'x fwd':>7s} "
             f"{'load s':>7s}"]
    for row in r["per_adapter"]:
        lines.append(f"{row['adapter'][:22]:22s} {row['method']:12s} {row['adapter_bytes'] / mb:8.2f} "
                     f"{row['forward_ms']:11.2f} {row['switch_ms']:10.4f} {row['switch_vs_forward']:7.4f} "
                     f"{row['load_s']:7.2f}")
    rss = r["rss_bytes"]
    lines += [
        "",
        f"base {r['base_bytes'] / mb:.1f} MB; shared server: {r['first_adapter_bytes'] / mb:.1f} MB with the first "
        f"adapter, {r['all_adapters_bytes'] / mb:.1f} MB with all {r['adapters']} "
        f"(+{r['added_after_first_bytes'] / mb:.1f} MB = {r['added_vs_base']:.3f}x base)",
        f"deep copies: {r['deep_copies_bytes'] / mb:.1f} MB (+{r['deep_copies_added_vs_base']:.2f}x base after the "
        f"first); shared / copies = {r['shared_vs_copies']:.3f}",
    ]
    if rss["before"] and rss["all"]:
        lines.append(f"process RSS: +{(rss['first'] - rss['before']) / mb:.0f} MB for the first adapter, "
                     f"+{(rss['all'] - rss['first']) / mb:.0f} MB for the other {r['adapters'] - 1}")
    if r.get("cuda_allocated_bytes"):
        a = r["cuda_allocated_bytes"]
        lines.append(f"CUDA allocated: +{(a['first'] - a['before']) / mb:.1f} MB first, "
                     f"+{(a['all'] - a['first']) / mb:.1f} MB the others")
    later = r["later_load_s_median"]
    lines.append(f"first load {r['first_load_s']:.2f} s (base created, structure built); later loads median "
                 + (f"{later:.2f} s" if later is not None else "n/a")
                 + f"; a switch in the zoo's cycle: median {r['cycle_switch_ms_median']:.4f} ms")
    lines.append(format_targets(r["targets"]))
    return "\n".join(lines)
