"""Every peft tuner that fits a timm or U-Net layer, through ONE table (:data:`TUNERS`).

A row is (peft config type, hyper-parameters with their defaults, the families it really supports with
each family's target rule, whether it is the base model at init, paper). One generic ``apply`` builds
the peft config from the row and the user's hyper-parameters (named as peft names them), selects the
target layers by type (the same selection LoRA uses, :mod:`adapters.methods.lora`) and wraps the model
with ``get_peft_model`` (head as ``modules_to_save``): the adapter folder is a plain peft folder, loaded
by stock ``PeftModel.from_pretrained(base, folder)`` (``split_qkv(base)`` first where targets are q/v,
as for LoRA). On the U-Net the tuner is injected into the diffusers attention projections
(``to_q/to_k/to_v/to_out.0``) with ``peft.inject_adapter_in_model``, as diffusers' ``add_adapter`` does.

Target rules (``targets`` hyper-parameter, ``auto`` = the row's rule for the family):
- ViT ``qv``: W_q and W_v of every block (timm's fused qkv split, as LoRA's default, the LoRA/VeRA/
  FourierFT papers' choice and Dutt et al.'s), so every low-rank/orthogonal tuner is compared on the
  same layers. ``kv_ff`` (IA3, as its paper): keys, values (output scaling) and the MLP's ``fc2``
  input (peft's ``feedforward_modules``). ``qkv``/``attn``/``all_linear`` as LoRA.
- CNN ``conv``: LoRA's conv rule (every stage's ungrouped convolutions); for OFT/BOFT only the convs
  whose ``in_channels * k * k`` the block size divides (ResNet's 7x7x3 stem has 147 and is skipped).
- U-Net: the attention projections.

Sizes that must divide or fit a layer (VBLoRA's ``vector_length``, C3A's ``block_size``, RoAd's
``group_size``, MiSS's and SHiRA's ``r``) are reduced to the largest value that fits every targeted layer
when the paper's default does not (tiny test models); the value used is recorded in ``medpeft.json``.

Not the base model at init with peft's defaults (``identity_at_init=False``, the invariant tests check
the opposite): FourierFT (random spectral coefficients, as the paper), VBLoRA (random vector bank and
logits) and C3A (random circular kernels). peft's ``init_weights`` for these is left at its default,
which is the papers' initialisation.

AdaLoRA (Zhang et al. ICLR 2023): the rank budget is re-allocated during training by
``update_and_allocate(step)``, called after every optimizer step by the one training step
(:func:`adapters.registry.after_step`); ``total_step`` is resolved by the trainer to the run's number of
steps (``total_step=0``, the default; 1000 outside the trainer), and the orthogonality regulariser (peft adds it only to transformers' ``outputs.loss``) is added
to the classification loss (:func:`adalora_orth_loss`). The final ``rank_pattern`` is recorded with the
hyper-parameters; adapter files keep the ``init_r`` shapes with the pruned values zero (same outputs).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .core import MethodError, family_of, freeze, head_name, replace_module, unwrap
from .registry import METHODS, Method, register

NON_IDENTITY = "peft's default init (the paper's) is not the base model"


@dataclass(frozen=True)
class Tuner:
    name: str
    config: str  # peft config class name
    families: dict[str, str]  # family -> default target rule
    paper: str
    summary: str
    defaults: dict[str, Any] = field(default_factory=dict)
    identity_at_init: bool = True
    fit: dict[str, str] = field(default_factory=dict)  # hparam -> "divides" | "shira" | "at_most"
    block: str | None = None  # hparam whose value must divide a conv's in_channels * k * k (OFT, BOFT)


_LR = {"r": 8, "alpha": 8}
ALL3, ALL2, UNET4 = {"vit": "qv", "cnn": "conv", "unet": "attn"}, {"vit": "qv", "cnn": "conv"}, None
TUNERS: list[Tuner] = [
    Tuner("loha", "LoHaConfig", ALL3, "Hyeon-Woo et al., FedPara (LoHa), ICLR 2022; LyCORIS",
          "low-rank Hadamard product updates (LyCORIS LoHa)", dict(_LR, rank_dropout=0.0, module_dropout=0.0)),
    Tuner("lokr", "LoKrConfig", ALL3, "Yeh et al., LyCORIS (LoKr), ICLR 2024",
          "Kronecker-product updates (LyCORIS LoKr)", dict(_LR, rank_dropout=0.0, module_dropout=0.0)),
    Tuner("ia3", "IA3Config", {"vit": "kv_ff", "cnn": "conv"}, "Liu et al., (IA)^3, NeurIPS 2022",
          "learned rescaling of keys, values and MLP activations (IA3)", {}),
    Tuner("oft", "OFTConfig", {"vit": "qv", "cnn": "pointwise", "unet": "attn"},
          "Qiu et al., Orthogonal Finetuning (OFT), NeurIPS 2023",
          "block-diagonal orthogonal rotation of each weight (OFT)",
          {"oft_block_size": 32, "module_dropout": 0.0, "coft": False}, fit={"oft_block_size": "divides_in"}),
    Tuner("boft", "BOFTConfig", ALL3, "Liu et al., BOFT (butterfly orthogonal finetuning), ICLR 2024",
          "butterfly-factorised orthogonal rotation of each weight (BOFT)",
          {"boft_block_size": 4, "boft_n_butterfly_factor": 1, "boft_dropout": 0.0}, block="boft_block_size"),
    Tuner("hra", "HRAConfig", ALL2, "Yuan et al., Householder Reflection Adaptation (HRA), NeurIPS 2024",
          "chain of Householder reflections applied to each weight (HRA)", {"r": 8, "apply_GS": False}),
    Tuner("vera", "VeraConfig", {"vit": "qv"}, "Kopiczko et al., VeRA, ICLR 2024",
          "shared frozen random low-rank matrices, trained scaling vectors (VeRA)",
          {"r": 256, "d_initial": 0.1, "vera_dropout": 0.0, "projection_prng_key": 0}),
    Tuner("fourierft", "FourierFTConfig", {"vit": "qv"}, "Gao et al., FourierFT, ICML 2024",
          "a few trained spectral coefficients of each weight update (FourierFT)",
          {"n_frequency": 1000, "scaling": 150.0, "random_loc_seed": 777}, identity_at_init=False,
          fit={"n_frequency": "at_most"}),
    Tuner("vblora", "VBLoRAConfig", {"vit": "qv"}, "Li et al., VB-LoRA, NeurIPS 2024",
          "low-rank factors composed from a shared vector bank (VB-LoRA)",
          {"r": 4, "num_vectors": 256, "vector_length": 256, "topk": 2, "vblora_dropout": 0.0},
          identity_at_init=False, fit={"vector_length": "divides"}),
    Tuner("randlora", "RandLoraConfig", {"vit": "qv"}, "Albert et al., RandLoRA, ICLR 2025",
          "full-rank update from shared random bases with trained scalings (RandLoRA)",
          {"r": 32, "randlora_alpha": 640, "randlora_dropout": 0.0, "projection_prng_key": 0}),
    Tuner("shira", "ShiraConfig", {"vit": "qv"}, "Bhardwaj et al., Sparse High Rank Adapters (SHiRA), NeurIPS 2024",
          "a trained sparse (random mask) subset of each weight (SHiRA)", {"r": 32, "random_seed": 0},
          fit={"r": "shira"}),
    Tuner("c3a", "C3AConfig", {"vit": "qv"}, "Chen et al., Circular Convolution Adaptation (C3A), ACL 2025",
          "block-circular convolution updates (C3A)", {"block_size": 256}, identity_at_init=False,
          fit={"block_size": "divides"}),
    Tuner("miss", "MissConfig", {"vit": "qv"}, "Kang et al., MiSS (Bone), 2024",
          "shard-shared trained block added to each weight (MiSS)", {"r": 64, "miss_dropout": 0.0},
          fit={"r": "at_most"}),
    Tuner("delora", "DeloraConfig", {"vit": "qv"}, "Bini et al., DeLoRA (decoupled low-rank adaptation), ICLR 2025",
          "normalised low-rank updates with a bounded learned strength (DeLoRA)",
          {"r": 8, "delora_lambda": 15, "module_dropout": 0.0}),
    Tuner("road", "RoadConfig", {"vit": "qv"}, "Liao et al., RoAd (2D rotary adaptation), NeurIPS 2024",
          "trained 2x2 rotations of output-feature pairs (RoAd)", {"variant": "road_1", "group_size": 64},
          fit={"group_size": "divides_out"}),
    Tuner("hira", "HiraConfig", ALL2, "Huang et al., HiRA (Hadamard high-rank adaptation), ICLR 2025",
          "Hadamard product of the weight with a low-rank update (HiRA)", {"r": 32, "hira_dropout": 0.0}),
    Tuner("adalora", "AdaLoraConfig", ALL2, "Zhang et al., AdaLoRA, ICLR 2023",
          "SVD-form LoRA whose rank budget is re-allocated during training (AdaLoRA)",
          {"init_r": 12, "target_r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "tinit": 0, "tfinal": 0, "deltaT": 1,
           "beta1": 0.85, "beta2": 0.85, "orth_reg_weight": 0.5, "total_step": 0, "rank_pattern": None}),
]
TUNER = {t.name: t for t in TUNERS}
RULES = {"vit": ("qv", "qkv", "attn", "all_linear", "kv_ff"), "cnn": ("conv", "spatial", "all_conv", "pointwise"),
         "unet": ("attn", "qv")}


def _fit(key: str, value: int, how: str, pairs: list[tuple[int, int]]) -> int:
    """The largest value <= ``value`` that fits every targeted layer (``pairs``: (in, out) features)."""
    if how.startswith("divides"):
        dims = [i for i, _ in pairs] * (how != "divides_out") + [o for _, o in pairs] * (how != "divides_in")
        g = math.gcd(*dims)
        return max(d for d in range(1, value + 1) if g % d == 0)
    if how == "at_most":
        return min([value] + [i * o if key == "n_frequency" else min(i, o) for i, o in pairs])
    # shira: r * (in + out) must stay below in * out for every layer
    return min([value] + [max(1, (i * o - 1) // (i + o)) for i, o in pairs])


def _layer_dims(layer: nn.Module) -> tuple[int, int]:
    """(in, out) features as peft's tuners see them (a conv's input patch is in_channels * k * k)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.in_channels * math.prod(layer.kernel_size), layer.out_channels


def _targets(model: nn.Module, family: str, rule: str, tuner: Tuner, hp: dict) -> tuple[list[str], list[str]]:
    """(target module names, feedforward module names for IA3)."""
    from .methods.lora import cnn_target_names, in_squeeze_excite, split_qkv, target_names

    if family == "unet":
        from .methods.unet_lora import target_names as unet_names

        return unet_names(model, "auto" if rule == "attn" else rule), []
    if family == "vit":
        if rule == "kv_ff":
            split_qkv(model)
            attn = target_names(model, "qv")
            kv = [n[:-1] + "k" if n.endswith(".q") else n for n in attn]
            ff = [f"blocks.{i}.mlp.fc2" for i in range(len(model.blocks))
                  if isinstance(getattr(getattr(model.blocks[i], "mlp", None), "fc2", None), nn.Linear)]
            return kv + ff, ff
        if rule == "qv":
            split_qkv(model)
        return target_names(model, rule), []
    head = head_name(model)
    if rule == "pointwise":  # peft's conv OFT is exact only on 1x1 kernels (it folds overlapping patches)
        names = [n for n in cnn_target_names(model, "all_conv", [head] if head else [])
                 if tuple(model.get_submodule(n).kernel_size) == (1, 1) and not in_squeeze_excite(model, n)]
        return names, []
    names = cnn_target_names(model, rule, [head] if head else [])
    if tuner.block:
        size = int(hp[tuner.block])
        names = [n for n in names if (lambda c: (c.in_channels * c.kernel_size[0] * c.kernel_size[1]) % size == 0)(
            model.get_submodule(n))]
    return names, []


def fitting_methods(family: str, layer: str) -> str:
    return ", ".join(m.name for m in METHODS.values() if family in m.families and m.peft and m.name != layer)


def _apply(tuner: Tuner, model: nn.Module, targets: str = "auto", **hp) -> nn.Module:
    import peft

    from .methods.lora import exact_names_regex, wrap_with_peft

    family = family_of(model)
    if family not in tuner.families:
        raise MethodError(f"peft's {tuner.name} does not adapt {family} layers; peft methods that do: "
                          f"{fitting_methods(family, tuner.name)}")
    rule = tuner.families[family] if targets == "auto" else targets
    if rule not in RULES[family]:
        raise MethodError(f"{tuner.name}: targets={targets!r} is not a {family} target rule; use auto or one of "
                          f"{', '.join(RULES[family])}")
    freeze(model)
    names, ff = _targets(model, family, rule, tuner, hp)
    if not names:
        raise MethodError(f"{tuner.name}: targets={rule!r} selects no layer of {type(model).__name__} that peft's "
                          f"{tuner.config[:-6]} accepts; methods that fit: {fitting_methods(family, tuner.name)}")
    layers = [unwrap(model).get_submodule(n) for n in names]
    pairs = [_layer_dims(m) for m in layers]
    for key, how in tuner.fit.items():
        hp[key] = _fit(key, int(hp[key]), how, pairs)
    kwargs = {k: v for k, v in hp.items() if k != "rank_pattern"}  # AdaLoRA's: recorded, see adalora_after_step
    if tuner.name == "ia3":
        kwargs["feedforward_modules"] = exact_names_regex(ff) if ff else []
    if tuner.name == "adalora":  # 0: the run's length, set by the trainer (peft needs a value to build)
        kwargs["total_step"] = int(kwargs["total_step"]) or 1000
    cls = getattr(peft, tuner.config)
    model.medpeft_resolved = {"targets": rule, **{k: hp[k] for k in tuner.fit}}  # recorded as used
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            if family == "unet":
                config = cls(target_modules=exact_names_regex(names), **kwargs)
                peft.inject_adapter_in_model(config, model)
                from peft.tuners.tuners_utils import BaseTunerLayer

                for layer in model.modules():
                    if isinstance(layer, BaseTunerLayer):
                        layer.set_adapter("default")  # the injected tensors train (peft's own switch)
                return model
            return wrap_with_peft(model, cls, target_modules=exact_names_regex(names), **kwargs)
    except (ValueError, TypeError, RuntimeError) as e:
        raise MethodError(f"peft's {tuner.config[:-6]} rejects these {family} layers ({str(e)[:160]}); peft "
                          f"methods that fit: {fitting_methods(family, tuner.name)}") from None


@torch.no_grad()
def _merge(model: nn.Module) -> nn.Module:
    from .methods.lora import fuse_qkv

    if family_of(model) == "unet":
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]:
            layer.merge()
            replace_module(model, name, layer.get_base_layer())
        return model
    return fuse_qkv(model.merge_and_unload())


def adalora_orth_loss(model: nn.Module) -> torch.Tensor | None:
    """AdaLoRA's orthogonality regulariser ``w * mean ||P P^T - I||_F`` over the A (rows) and B (columns)
    factors, as peft's ``AdaLoraModel.forward`` adds to a transformers loss."""
    weight = float(getattr(model, "medpeft_hparams", {}).get("orth_reg_weight", 0.0))
    terms = []
    for n, p in model.named_parameters():
        if p.requires_grad and ("lora_A" in n or "lora_B" in n):
            cov = p @ p.T if "lora_A" in n else p.T @ p
            terms.append(torch.norm(cov - torch.eye(*cov.shape, device=p.device, dtype=p.dtype), p="fro"))
    if not terms or weight <= 0:
        return None
    return weight * torch.stack(terms).mean()


def adalora_after_step(model: nn.Module, step: int) -> None:
    """AdaLoRA's budget schedule: peft's ``update_and_allocate`` (needs this step's gradients). The pattern
    it allocates is kept out of the peft config between steps, so adapter files keep the full ``init_r``
    shapes (the pruned singular values are zero in them: the same outputs, and any checkpoint of the run
    loads into the same model); ``medpeft.json`` records the final pattern."""
    config = model.peft_config["default"]
    config.rank_pattern = getattr(model, "medpeft_rank_pattern", None)
    model.base_model.update_and_allocate(step)
    model.medpeft_rank_pattern, config.rank_pattern = config.rank_pattern, None
    if model.medpeft_rank_pattern:
        model.medpeft_hparams["rank_pattern"] = {k: [bool(b) for b in v] for k, v in model.medpeft_rank_pattern.items()}


def _register(t: Tuner) -> None:
    def apply(model: nn.Module, **hp) -> nn.Module:
        return _apply(t, model, **hp)

    apply.__doc__ = f"{t.summary}; {t.paper} (peft {t.config})"
    ident = t.identity_at_init
    register(Method(
        name=t.name, families=tuple(t.families), apply=apply, merge=_merge,
        defaults={**t.defaults, "targets": "auto"}, peft=True, identity_at_init=ident,
        summary=t.summary + ("" if ident else f" [{NON_IDENTITY}]") + " + head", paper=t.paper,
        after_step=adalora_after_step if t.name == "adalora" else None,
        extra_loss=adalora_orth_loss if t.name == "adalora" else None))


for _t in TUNERS:
    _register(_t)


def config_type(name: str) -> str | None:
    """The peft config class behind a bridged method (None: not a bridged tuner)."""
    return TUNER[name].config if name in TUNER else None
