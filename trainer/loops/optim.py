"""How a training step runs, shared by the loops and by ``python -m trainer.perf`` (which times exactly
this step): the accelerator, the optimizer, the learning-rate schedule and the step itself.

    accelerator = make_accelerator(rt.precision, non_blocking=rt.non_blocking)   # rt: trainer.loops.precision
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=rt.fused_optimizer)
    sched = build_scheduler(opt, epochs=cfg.epochs, steps_per_epoch=n, warmup_epochs=cfg.warmup_epochs)
    loss = train_step(model, x, y, loss_fn, opt, sched, grad_clip=cfg.grad_clip, accelerator=accelerator)
"""
from __future__ import annotations

import contextlib
import math
import re
from typing import Callable

import torch
from torch import nn


def setup_cuda_backends() -> None:
    """On CUDA: TF32 matmuls and convolutions, cuDNN autotuning (fixed input shapes). No-op elsewhere."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")


def make_accelerator(mixed_precision: str = "no", non_blocking: bool = False):
    """An ``accelerate.Accelerator`` (CPU when there is no CUDA), with :func:`setup_cuda_backends`.
    ``mixed_precision``: no | bf16 | fp16 (fp16 with accelerate's gradient scaler; ``auto`` is resolved
    by :func:`trainer.loops.precision.resolve_precision` first); ``non_blocking``: the prepared loaders
    copy batches to the device asynchronously (with pinned memory, on CUDA).

    In a single process that already made one with another precision (several runs in one Python
    session: tests, the web UI), accelerate's process-wide state is reset first; in a multi-process
    launch that stays an error."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DataLoaderConfiguration

    setup_cuda_backends()
    cpu = not torch.cuda.is_available()
    if mixed_precision == "auto":
        from .precision import resolve_precision

        mixed_precision = resolve_precision("auto", "cpu" if cpu else "cuda")

    def make():
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu,
                           dataloader_config=DataLoaderConfiguration(non_blocking=bool(non_blocking and not cpu)))

    try:
        return make()
    except ValueError as e:
        if "already been initialized" not in str(e) or PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return make()


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED = re.compile(r"(?:^|\.)(cls_token|reg_token|dist_token|pos_embed|patch_embed)(?:\.|$)")


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """(parameter name -> layer id, number of ids) for layer-wise lr decay as BEiT/MAE fine-tuning:
    0 for the patch/position embeddings and class token, i + 1 for block i, L + 1 for everything after
    the blocks (final norm, fc_norm, head). Names may carry wrappers' prefixes (peft's ``base_model.model.``)."""
    names = [n for n, _ in model.named_parameters()]
    blocks = [int(m.group(1)) for n in names if (m := _BLOCK.search(n))]
    depth = max(blocks) + 1 if blocks else 0
    ids = {}
    for n in names:
        if (m := _BLOCK.search(n)) is not None:
            ids[n] = int(m.group(1)) + 1
        elif _EMBED.search(n):
            ids[n] = 0
        else:
            ids[n] = depth + 1
    return ids, depth + 2


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    layer_decay: float | None = None, fused: bool | None = None, optimizer: str = "adamw",
                    loraplus_lr_ratio: float = 16.0) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only; weight decay on tensors of >= 2 dimensions (weights),
    none on biases, norms and other vectors. ``layer_decay`` (e.g. 0.65, BEiT/MAE): the parameters of
    layer id k (:func:`layer_ids`) train at ``lr * layer_decay ** (num_ids - 1 - k)``, the head at ``lr``.
    Every method's trainable parameters inside blocks (LoRA factors, adapters, biases, norms) follow
    their block. A model without ``blocks`` (a CNN) has one layer: ``layer_decay`` then changes nothing.
    ``fused``: torch's fused AdamW kernel (one launch for all tensors; CUDA, the loops' default there via
    :mod:`trainer.loops.precision`); None/False: torch's default (foreach). The update is the same.

    ``optimizer="loraplus"`` (Hayou et al., "LoRA+: Efficient Low Rank Adaptation of Large Models", ICML
    2024): peft's ``create_loraplus_optimizer`` (AdamW), LoRA's B matrices at ``lr * loraplus_lr_ratio``
    (default 16, peft's example), A and the rest (head) at ``lr``; a model without LoRA B matrices is refused."""
    if optimizer == "loraplus":
        return _loraplus(model, lr, weight_decay, loraplus_lr_ratio)
    if optimizer != "adamw":
        raise ValueError(f"optimizer must be adamw or loraplus, not {optimizer!r}")
    ids, n_ids = layer_ids(model) if layer_decay is not None else ({}, 1)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer, decays = ids.get(name, n_ids - 1), p.ndim >= 2
        scale = layer_decay ** (n_ids - 1 - layer) if layer_decay is not None else 1.0
        group = groups.setdefault((layer, decays), {"params": [], "weight_decay": weight_decay if decays else 0.0,
                                                    "lr": lr * scale, "layer_id": layer})
        group["params"].append(p)
    ordered = [groups[k] for k in sorted(groups, key=lambda k: (-k[1], k[0]))]
    return torch.optim.AdamW(ordered, lr=lr, **({"fused": True} if fused else {}))


def _loraplus(model: nn.Module, lr: float, weight_decay: float, ratio: float):
    from peft.optimizers import create_loraplus_optimizer

    if not any(".lora_B." in n and p.requires_grad for n, p in model.named_parameters()):
        raise ValueError("--optimizer loraplus needs LoRA B matrices (methods lora, dora); use adamw for "
                         f"{getattr(model, 'medpeft_method', 'this method')}")
    return create_loraplus_optimizer(model=model, optimizer_cls=torch.optim.AdamW, lr=lr,
                                     loraplus_lr_ratio=float(ratio), weight_decay=weight_decay)


def resolve_total_steps(model: nn.Module, cfg, total: int) -> None:
    """A method whose schedule needs the run's length (AdaLoRA's ``total_step``, 0 = the run's) gets it;
    the value used is recorded with the hyper-parameters (medpeft.json)."""
    inner = getattr(model, "module", model)
    hp = getattr(inner, "medpeft_hparams", {})
    if "total_step" not in hp or cfg.hparams.get("total_step") != 0:
        return
    hp["total_step"] = int(total)
    inner.peft_config["default"].total_step = int(total)


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
    (``autocast``: a context-manager factory, e.g. bf16 ``torch.autocast`` in perf).

    The method's own training hooks run here, for every method through this one step
    (:func:`adapters.registry.extra_loss`: a regulariser added to the loss, e.g. AdaLoRA's orthogonality
    term; :func:`adapters.registry.after_step`: after the optimizer step, while the gradients are still
    there, e.g. AdaLoRA's ``update_and_allocate``)."""
    from adapters.registry import after_step, extra_loss

    optimizer.zero_grad(set_to_none=True)
    ctx = autocast if autocast is not None else (accelerator.autocast if accelerator is not None
                                                 else contextlib.nullcontext)
    with ctx():
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    reg = extra_loss(model)
    total = loss if reg is None else loss + reg.float()
    if accelerator is not None:
        accelerator.backward(total)
    else:
        total.backward()
    if grad_clip:
        params = [p for p in model.parameters() if p.requires_grad]
        clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
        clip(params, grad_clip)
    optimizer.step()
    after_step(model)
    if scheduler is not None:
        scheduler.step()
    return loss.detach()
