"""How a training step runs, shared by the loops and by ``python -m trainer.perf`` (which times exactly
this step): the accelerator, the optimizer, the learning-rate schedule and the step itself.

    accelerator = make_accelerator(cfg.mixed_precision)
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = build_scheduler(opt, epochs=cfg.epochs, steps_per_epoch=n, warmup_epochs=cfg.warmup_epochs)
    loss = train_step(model, x, y, loss_fn, opt, sched, grad_clip=cfg.grad_clip, accelerator=accelerator)
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from torch import nn


def setup_cuda_backends() -> None:
    """On CUDA: TF32 matmuls and convolutions, cuDNN autotuning (fixed input shapes). No-op elsewhere."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def make_accelerator(mixed_precision: str = "no"):
    """An ``accelerate.Accelerator`` (CPU when there is no CUDA), with :func:`setup_cuda_backends`.

    In a single process that already made one with another precision (several runs in one Python
    session: tests, the web UI), accelerate's process-wide state is reset first; in a multi-process
    launch that stays an error."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    setup_cuda_backends()
    cpu = not torch.cuda.is_available()
    try:
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    except ValueError as e:
        if "already been initialized" not in str(e) or PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only; weight decay on tensors of >= 2 dimensions (weights),
    none on biases, norms and other vectors."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def build_scheduler(optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0):
    """Per-step schedule: linear warm-up over ``warmup_epochs``, then cosine decay to 0 at the last step."""
    total = max(1, epochs * steps_per_epoch)
    warmup = int(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, optimizer, scheduler=None,
               *, grad_clip: float | None = None, accelerator=None,
               autocast: Callable[[], contextlib.AbstractContextManager] | None = None) -> torch.Tensor:
    """One optimisation step: zero the gradients (first, so the last step's are not kept alive during
    the forward), forward under autocast, loss on fp32 logits, backward, clip the trainable parameters'
    gradient norm to ``grad_clip`` (if set), optimizer step, scheduler step. Returns the detached loss.

    ``accelerator``: its autocast, backward and clipping (the loops); without one, plain torch
    (``autocast``: a context-manager factory, e.g. bf16 ``torch.autocast`` in perf)."""
    optimizer.zero_grad(set_to_none=True)
    ctx = autocast if autocast is not None else (accelerator.autocast if accelerator is not None
                                                 else contextlib.nullcontext)
    with ctx():
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    if accelerator is not None:
        accelerator.backward(loss)
    else:
        loss.backward()
    if grad_clip:
        params = [p for p in model.parameters() if p.requires_grad]
        clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
        clip(params, grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.detach()
