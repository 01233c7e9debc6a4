"""The measured set-up of ``python -m trainer.perf``: the bench settings, building the model, batches,
the trainer's own training step, timing."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn



ROOT = Path(__file__).resolve().parents[3]
CHILD_TAG = "MEDPEFT_PERF_CHILD "
DEVICE_DEFAULTS = {
    "cuda": dict(backbone="vit_base_patch16_224", batch_size=128, steps=20, warmup=5, dtype="bf16"),
    "cpu": dict(backbone="vit_tiny_patch16_224", batch_size=8, steps=5, warmup=1, dtype="fp32"),
}
MEM_STEPS = 2  # the trainer's step order reaches its peak in step 2 (step 1's gradients + optimizer state live)
TARGETS = {"lora_memory_vs_full": 0.6, "lora_time_vs_full": 0.85, "merged_vs_base": 1.05,
           "linear_probe_cached_speedup": 10.0, "lora_images_per_s_h100": 1500.0, "loader_vs_model": 3.0,
           "lora_gc_memory_vs_full": 0.35, "ssf_memory_vs_full": 1.0,
           "trainer_vs_baseline_gpu": 0.5, "trainer_vs_baseline_cpu": 0.9}
GC = "+gc"  # a method name with this suffix ("lora+gc") is measured with gradient checkpointing on


def split_variant(method: str) -> tuple[str, bool]:
    """``"lora+gc"`` -> ``("lora", True)``; ``"lora"`` -> ``("lora", False)``."""
    return (method[:-len(GC)], True) if method.endswith(GC) else (method, False)


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
    """CUDA only: TF32 matmuls/convolutions and cuDNN autotuning, as the trainer sets them."""
    if torch.device(device).type == "cuda":
        from ...loops.optim import setup_cuda_backends

        setup_cuda_backends()


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
    """Backbone (+ method), on the device; channels_last for CNNs on CUDA; a ``+gc`` method with
    gradient checkpointing (:func:`trainer.loops.precision.enable_grad_checkpointing`)."""
    from adapters import apply_method, create_backbone, family_of

    from ...loops.precision import enable_grad_checkpointing

    model = create_backbone(bench.backbone, bench.num_classes, pretrained=bench.pretrained, img_size=bench.img_size)
    if method is not None:
        name, gc = split_variant(method)
        model = apply_method(model, name)
        if gc:
            enable_grad_checkpointing(model)
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
    """The trainer's own AdamW (trainable parameters only, decay on >= 2-D tensors; fused on CUDA, as
    the trainer's runtime picks it)."""
    from ...config import TrainConfig
    from ...loops.optim import build_optimizer

    cfg = TrainConfig()
    cuda = next(model.parameters()).device.type == "cuda"
    return build_optimizer(model, cfg.lr, cfg.weight_decay, fused=cuda)


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
