"""Measuring one method (step time, memory, activations, merged latency) and the linear-probe epoch."""
from __future__ import annotations

import copy
import statistics
from typing import Any, Callable

import torch
from torch import nn

from .bench import Bench, autocast_for, build, infer_fn, make_train_step, timed, timed_round_robin
from .memory import release_memory


# ------------------------------------------------------------------------------------------ measure

def saved_activation_bytes(model: nn.Module, bench: Bench, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one training forward (parameters excluded):
    the activation memory, the same on any device. PEFT saves less where frozen layers need not keep
    their inputs for weight gradients."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if t.layout != torch.strided:  # sparse tensors (peft's SHiRA) have no storage of their own
            return t
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
    release_memory(bench.device)


def measure_method(bench: Bench, method: str, x: torch.Tensor, y: torch.Tensor, base_infer: Callable) -> dict:
    from adapters import NotMergeable, count_params, merge_method

    cuda = torch.device(bench.device).type == "cuda"
    release_memory(bench.device)
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
    release_memory(bench.device)
    out["saved_activations_mb"] = saved_activation_bytes(model, bench, x) / 2 ** 20
    release_memory(bench.device)
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
    release_memory(bench.device)
    return out


def linear_probe_epoch(bench: Bench, x: torch.Tensor, y: torch.Tensor, batches: int) -> dict:
    """Linear-probe epoch through the frozen backbone vs on cached features (trainer.loops.features)."""
    from ...loops.features import compare_epoch_times, head_splits

    model = build(bench, "linear_probe")
    if not head_splits(model, tuple(x.shape[1:]), device=bench.device):
        return {"error": "this backbone's head cannot be split off: no cached-feature path"}
    images = x.repeat(batches, 1, 1, 1)
    labels = y.repeat(batches)
    out = compare_epoch_times(model, images, labels, bench.batch_size, bench.device, autocast_for(bench))
    del model
    release_memory(bench.device)
    return out
