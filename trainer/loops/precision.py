"""What a run does on the machine it finds: precision, memory format, fused optimizer, TF32, loader
workers, host-to-device copies, compilation and gradient checkpointing - resolved once, by one pure
function, and recorded in results.json (``runtime``).

    rt = resolve_runtime(cfg, family="cnn")   # device: CUDA if available, else CPU
    accelerator = make_accelerator(rt.precision, non_blocking=rt.non_blocking)   # trainer.loops.optim
    model = prepare_model(model, rt)           # channels_last, gradient checkpointing, torch.compile
    opt = build_optimizer(model, lr, wd, fused=rt.fused_optimizer)
    rt.record()                                # {"precision": "bf16", "memory_format": "channels_last", ...}

Defaults without flags (issue 16):

==================== ======================================== =====================
option               CUDA                                     CPU
==================== ======================================== =====================
precision (auto)     bf16 where supported, else fp16 + scaler no (fp32)
memory format        channels_last for CNN backbones          contiguous
AdamW                fused                                    foreach (torch's)
TF32 matmul/conv     on                                       -
host-to-device       pinned memory, non-blocking copies       -
loader workers       --num-workers; None: min(8, CPUs - 1)   same
torch.compile        off (--compile)                          off
grad checkpointing   off (--grad-checkpointing)               off
==================== ======================================== =====================

fp16 gets its gradient scaler from accelerate (``Accelerator(mixed_precision="fp16")``). An explicit
``--mixed-precision no|bf16|fp16`` is used as given. Gradient checkpointing: timm's
``set_grad_checkpointing`` (ViTs and CNNs, inside a peft wrapper too), the diffusers U-Net's
``enable_gradient_checkpointing``; compilation is ``nn.Module.compile`` (in place, names unchanged).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

from adapters import unwrap

from ..config import ConfigError

PRECISIONS = ("auto", "no", "bf16", "fp16")


@dataclass(frozen=True)
class Runtime:
    device: str  # "cuda" | "cpu"
    precision: str  # accelerate's mixed_precision: "no" | "bf16" | "fp16"
    channels_last: bool
    fused_optimizer: bool
    tf32: bool
    pin_memory: bool
    non_blocking: bool
    num_workers: int
    compile: bool
    grad_checkpointing: bool

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def grad_scaler(self) -> bool:
        """fp16 needs loss scaling (accelerate's GradScaler); bf16 and fp32 do not."""
        return self.precision == "fp16"

    def record(self) -> dict:
        """What results.json records (``runtime``): the settings actually used."""
        out = asdict(self)
        out["memory_format"] = "channels_last" if out.pop("channels_last") else "contiguous"
        out["grad_scaler"] = self.grad_scaler
        return out


def default_workers(cpu_count: int | None = None) -> int:
    """Loader workers sized to the machine: ``min(8, CPUs - 1)``, at least 1 where there are 2+ CPUs."""
    n = os.cpu_count() if cpu_count is None else cpu_count
    return max(0, min(8, (n or 1) - 1))


def cuda_supports_bf16() -> bool:
    """Native bf16 on the current CUDA device: compute capability 8.0+ (Ampere, Hopper, ...); on ROCm
    torch's own answer. Emulated bf16 (older GPUs) counts as not supported: fp16 is faster there."""
    if getattr(torch.version, "hip", None):
        return bool(torch.cuda.is_bf16_supported())
    return tuple(torch.cuda.get_device_capability()) >= (8, 0)


def resolve_precision(requested: str, device: str) -> str:
    """``auto``: bf16 on a CUDA GPU that supports it, fp16 (with accelerate's grad scaler) on one that
    does not, fp32 (``no``) on CPU. ``no``/``bf16``/``fp16`` are returned as given."""
    if requested not in PRECISIONS:
        raise ConfigError(f"mixed_precision (--mixed-precision) must be one of {', '.join(PRECISIONS)}, "
                          f"got {requested!r}")
    if requested != "auto":
        return requested
    if device == "cuda":
        return "bf16" if cuda_supports_bf16() else "fp16"
    return "no"


def _device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def wants_grad_checkpointing(cfg) -> bool:
    """``--grad-checkpointing`` (both tasks), or the generation task's older ``--gradient-checkpointing``."""
    return bool(getattr(cfg, "grad_checkpointing", False) or getattr(cfg, "gradient_checkpointing", False))


def resolve_runtime(cfg, family: str, device: str | None = None) -> Runtime:
    """The runtime settings for a run of ``cfg`` (a TrainConfig) on a ``family`` backbone ("vit", "cnn",
    "unet"). ``device`` defaults to what the loops use: CUDA when available, else CPU."""
    device = _device(device)
    cuda = device == "cuda"
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers()
    return Runtime(device=device, precision=resolve_precision(cfg.mixed_precision, device),
                   channels_last=cuda and family == "cnn", fused_optimizer=cuda, tf32=cuda, pin_memory=cuda,
                   non_blocking=cuda, num_workers=workers, compile=bool(getattr(cfg, "compile", False)),
                   grad_checkpointing=wants_grad_checkpointing(cfg))


def config_runtime(cfg, device: str | None = None) -> Runtime:
    """:func:`resolve_runtime` for a classification config, the family read from its backbone built
    on the meta device (no weights allocated, nothing downloaded)."""
    from adapters import create_backbone, family_of

    with torch.device("meta"):
        probe = create_backbone(cfg.resolved_backbone(), 2, pretrained=False, img_size=cfg.img_size)
    return resolve_runtime(cfg, family_of(probe), device)


def model_runtime(cfg, model: nn.Module, device: str | None = None) -> Runtime:
    """:func:`resolve_runtime` for ``model``'s family (the same answer as :func:`config_runtime`)."""
    from adapters import family_of

    return resolve_runtime(cfg, family_of(model), device)


def loader_options(cfg, device: str | None = None) -> dict:
    """DataLoader keywords of the runtime: workers, and pinned memory on CUDA (for non-blocking copies)."""
    device = _device(device)
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers()
    return {"num_workers": workers, "pin_memory": device == "cuda"}


def enable_grad_checkpointing(model: nn.Module) -> nn.Module:
    """Gradient checkpointing on the (possibly peft-wrapped) model: activations inside each block are
    recomputed in backward instead of kept. timm models: ``set_grad_checkpointing(True)``; the diffusers
    U-Net: its own ``enable_gradient_checkpointing()``. Raises :class:`ConfigError` for a backbone that
    has no gradient checkpointing."""
    base = unwrap(model)
    name = type(base).__name__
    if getattr(base, "set_grad_checkpointing", None) is None and hasattr(base, "enable_gradient_checkpointing"):
        base.enable_gradient_checkpointing()  # diffusers
        if getattr(base, "is_gradient_checkpointing", True) is False:
            raise ConfigError(f"gradient checkpointing (--grad-checkpointing) did not switch on for {name}; "
                              f"run without the flag")
        return model
    setter = getattr(base, "set_grad_checkpointing", None)
    if setter is None:
        raise ConfigError(f"gradient checkpointing (--grad-checkpointing) is not available for {name}: "
                          f"it has no set_grad_checkpointing; run without the flag")
    try:
        setter(True)
    except (AssertionError, NotImplementedError) as e:  # timm models that do not support it say so this way
        raise ConfigError(f"gradient checkpointing (--grad-checkpointing) is not supported by {name}"
                          f"{': ' + str(e) if str(e) else ''}; run without the flag") from None
    if getattr(base, "grad_checkpointing", True) is False:
        raise ConfigError(f"gradient checkpointing (--grad-checkpointing) did not switch on for {name}; "
                          f"run without the flag")
    return model


def prepare_model(model: nn.Module, rt: Runtime) -> nn.Module:
    """Apply the runtime's model settings: channels_last memory format, gradient checkpointing,
    ``torch.compile`` (last, so that it compiles the model as it will run). Compilation is in place
    (``nn.Module.compile``): the module, its parameter names and state dict stay as they are, so
    checkpoints, adapters and accelerate's ``unwrap_model`` see the plain model."""
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if rt.grad_checkpointing:
        enable_grad_checkpointing(model)
    if rt.compile:
        model.compile()
    return model


def is_compiled(model: nn.Module) -> bool:
    """Whether :func:`prepare_model` compiled ``model`` (in place)."""
    return getattr(model, "_compiled_call_impl", None) is not None
