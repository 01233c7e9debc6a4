"""Exact conversion of foundation models into timm ``VisionTransformer`` (the one model family inside).

Each source format gives a *spec* (JSON: what timm builds) read from the repo's own config, and a
mapping of its state dict onto timm's names:

- transformers ``Dinov2Model`` (also ``Dinov2WithRegistersModel``, SwiGLU and LayerScale as configured):
  q/k/v fused into ``qkv``; LayerScale ``lambda1`` -> ``ls*.gamma``; SwiGLU ``weights_in`` (gate, up) ->
  ``GluMlp.fc1`` with SiLU on the first half, as Dinov2's ``silu(x1) * x2``; registers go after the class
  token (timm ``reg_tokens``, ``no_embed_class``, the class position folded into the class token, exactly
  the sum the source adds in every forward).
- transformers ``SiglipVisionModel`` / ``SiglipModel`` (vision tower): no class token; the attention-pool
  head becomes timm's ``AttentionPoolLatent`` (``probe`` -> ``latent``, ``in_proj`` split into q and kv).
- transformers ``ViTModel``: the BERT-style names of the ViT encoder.
- open_clip with a timm image tower (BiomedCLIP): the ``trunk`` is already timm; the image projection
  (``head.proj`` / ``head.mlp``) is kept as :attr:`FoundationViT.proj`. open_clip's own ViT (CLIP):
  ``ln_pre`` -> ``norm_pre``, fused ``in_proj`` -> ``qkv``, ``ln_post`` -> ``norm``, ``proj`` -> a Linear.
- timm (with the authors' extra arguments): loaded through timm's own ``checkpoint_filter_fn``.

State mappings: :mod:`adapters.convert_state`. Position embeddings are resampled once, at build time, to the requested input size with the source's
own interpolation (bicubic, ``align_corners=False``; antialias as the source does it), so the converted
model equals the source at that size. Formats whose authors ask for ``dynamic_img_size`` keep it.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from .core import BackboneError


class ConversionError(BackboneError):
    """A repo's config or weights do not match the format its preset names."""


class FoundationViT(VisionTransformer):
    """timm's ViT with the foundation model's own embedding (``pooling``) and optional image projection
    (CLIP). ``num_features`` / ``head_hidden_size`` is the embedding size, so a fresh head fits it."""

    pooling: str = "token"
    # Position embeddings are resampled (dynamic_img_size) with the model's own prefix tokens (class,
    # registers), not ``num_prefix_tokens``, which prompt methods (VPT) grow: safe for them.
    prefix_safe_pos_embed = True

    def setup(self, pooling: str, proj: nn.Module | None = None, out_dim: int | None = None) -> None:
        self.pooling = pooling
        self.proj = proj
        self.base_prefix_tokens = self.num_prefix_tokens
        width = self.embed_dim * 2 if pooling == "cls_avg" else self.embed_dim
        self.num_features = self.head_hidden_size = out_dim or width

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pooling == "cls_avg":  # class token ++ mean of the patch tokens (registers, prompts excluded)
            x = torch.cat([x[:, 0], x[:, self.num_prefix_tokens:].mean(dim=1)], dim=-1)
        else:
            x = self.pool(x)
        x = self.fc_norm(x)
        if self.proj is not None:
            x = self.proj(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dynamic_img_size:
            return super()._pos_embed(x)
        from timm.layers import resample_abs_pos_embed

        b, h, w, c = x.shape  # timm's dynamic path (bicubic, antialias), prefix = class + register tokens
        prefix = 0 if self.no_embed_class else self.base_prefix_tokens
        pos = resample_abs_pos_embed(self.pos_embed, (h, w), old_size=self.patch_embed.grid_size,
                                     num_prefix_tokens=prefix)
        x = x.view(b, -1, c)
        tokens = [t.expand(b, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        x = torch.cat(tokens + [x + pos], dim=1) if self.no_embed_class else torch.cat(tokens + [x], dim=1) + pos
        return self.pos_drop(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None and global_pool != self.global_pool:
            raise ConversionError(f"the pooling of this foundation model is fixed ({self.pooling})")
        self.num_classes = num_classes
        like = self.patch_embed.proj.weight
        self.head = (nn.Linear(self.head_hidden_size, num_classes, device=like.device, dtype=like.dtype)
                     if num_classes > 0 else nn.Identity())


# --------------------------------------------------------------------------------------------- build
def _ratio(hidden: int, dim: int) -> float:
    """An ``mlp_ratio`` with ``int(dim * ratio) == hidden`` exactly (timm sizes its MLP that way)."""
    return (hidden + 0.5) / dim


def build(spec: dict[str, Any], img_size: int | None = None, init: bool = True) -> FoundationViT:
    """The timm model a spec describes (random weights), at ``img_size`` (default: the source's).
    ``init=False`` skips timm's weight initialisation (every tensor is loaded next)."""
    import timm
    from timm.layers import SwiGLUPacked, get_act_layer

    args = dict(spec["args"])
    for key in ("mlp_layer", "act_layer"):  # names in presets / configs -> timm layers
        name = args.get(key)
        if isinstance(name, str):  # "swiglu_packed", "timm.layers.SwiGLUPacked", "silu", "torch.nn.SiLU" ...
            short = name.rsplit(".", 1)[-1].lower()
            if key == "mlp_layer":
                if "swiglu" not in short:
                    raise ConversionError(f"mlp_layer {name!r}: only SwiGLUPacked is known here")
                args[key] = SwiGLUPacked
            else:
                args[key] = get_act_layer(short)
    if spec.get("norm_eps") is not None:
        args["norm_layer"] = partial(nn.LayerNorm, eps=spec["norm_eps"])
    if img_size and not args.get("dynamic_img_size"):
        args["img_size"] = img_size
    pooling = spec["pooling"]
    args["global_pool"] = {"cls_avg": "token", "token_proj": "token"}.get(pooling, pooling)
    args["num_classes"] = 0
    if not init:
        args["weight_init"] = "skip"
    if spec.get("arch"):
        model = timm.create_model(spec["arch"], pretrained=False, **args)
    else:
        model = VisionTransformer(**args)
    if not isinstance(model, VisionTransformer):
        raise ConversionError(f"{spec['arch']} is a timm {type(model).__name__}, not a VisionTransformer: "
                              f"only LoRA-family methods (peft) can use it; not supported as a preset base yet")
    model.__class__ = FoundationViT
    proj, out_dim = None, None
    if spec.get("proj"):
        p = spec["proj"]
        width = model.embed_dim
        if p["type"] == "mlp":
            from timm.layers import Mlp

            proj = Mlp(width, 2 * p["dim"], p["dim"], bias=(True, p.get("bias", False)))
        else:
            proj = nn.Linear(width, p["dim"], bias=p.get("bias", False))
        out_dim = p["dim"]
    model.setup(pooling, proj, out_dim)
    return model


def resample_pos_embed(model: FoundationViT, state: dict[str, torch.Tensor], antialias: bool) -> None:
    """Resample ``state["pos_embed"]`` (the source grid) to the model's grid, in place, as the source
    library interpolates (bicubic, align_corners=False, float32; prefix tokens kept)."""
    pos = state.get("pos_embed")
    if pos is None or pos.shape == model.pos_embed.shape:
        return
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    old = math.isqrt(pos.shape[1] - prefix)
    if old * old != pos.shape[1] - prefix:
        raise ConversionError(f"pos_embed of shape {tuple(pos.shape)} is not a square grid")
    new_h, new_w = model.patch_embed.grid_size
    grid = pos[:, prefix:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = nn.functional.interpolate(grid.float(), size=(new_h, new_w), mode="bicubic", align_corners=False,
                                     antialias=antialias).to(pos.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, -1)
    state["pos_embed"] = torch.cat([pos[:, :prefix], grid], dim=1)


# --------------------------------------------------------------------------------------------- specs
def spec_from_config(source: str, config: dict[str, Any], pooling: str, timm_args: dict[str, Any]) -> dict:
    """What timm builds for a repo, from the repo's own config (+ the preset's arguments it lacks)."""
    if source == "transformers":
        return _hf_spec(config, pooling)
    if source == "open_clip":
        return _open_clip_spec(config, pooling)
    if source in ("timm", "mae"):
        if "architecture" not in config:
            raise ConversionError("the timm config.json has no 'architecture'")
        model_args = {k: v for k, v in (config.get("model_args") or {}).items()
                      if k not in ("num_classes", "global_pool", "pretrained_cfg", "pretrained_cfg_overlay")}
        args = {**timm_args, **model_args}  # the repo's config wins; the preset adds what it lacks
        return {"format": source, "arch": config["architecture"], "args": args, "pooling": pooling,
                "antialias": True}
    raise ConversionError(f"unknown source format {source!r}")


def hf_config(config: dict[str, Any]):
    """A transformers config object (defaults filled in by transformers) for a config.json dict."""
    from transformers import AutoConfig

    data = dict(config)
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise ConversionError("config.json has no model_type")
    try:
        cfg = AutoConfig.for_model(model_type, **data)
    except (KeyError, ValueError) as e:
        raise ConversionError(f"config.json: transformers does not know model_type {model_type!r} ({e})") from None
    if model_type == "siglip":  # the full SigLIP (text + vision): its vision tower
        cfg = cfg.vision_config
    return cfg


def _hf_spec(config: dict[str, Any], pooling: str) -> dict:
    cfg = hf_config(config)
    mt = cfg.model_type
    dim, eps = cfg.hidden_size, cfg.layer_norm_eps
    args: dict[str, Any] = {"img_size": cfg.image_size, "patch_size": cfg.patch_size, "embed_dim": dim,
                            "depth": cfg.num_hidden_layers, "num_heads": cfg.num_attention_heads,
                            "qkv_bias": getattr(cfg, "qkv_bias", True)}
    act = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "quick_gelu": "quick_gelu",
           "silu": "silu"}
    if getattr(cfg, "hidden_act", "gelu") not in act:
        raise ConversionError(f"config.json: hidden_act {cfg.hidden_act!r} has no timm equivalent here")
    args["act_layer"] = act[cfg.hidden_act]
    if mt in ("dinov2", "dinov2_with_registers"):
        hidden = int(dim * cfg.mlp_ratio)
        if cfg.use_swiglu_ffn:
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
            args.update(mlp_layer="swiglu_packed", act_layer="silu", mlp_ratio=_ratio(2 * hidden, dim))
        else:
            args["mlp_ratio"] = _ratio(hidden, dim)
        regs = getattr(cfg, "num_register_tokens", 0) if mt == "dinov2_with_registers" else 0
        args.update(init_values=cfg.layerscale_value, reg_tokens=regs, no_embed_class=regs > 0)
        antialias = mt == "dinov2_with_registers"  # as each model's interpolate_pos_encoding
    elif mt == "siglip_vision_model":
        args.update(mlp_ratio=_ratio(cfg.intermediate_size, dim), class_token=False)
        if pooling == "map" and not getattr(cfg, "vision_use_head", True):
            raise ConversionError("this SigLIP config has no attention-pool head (vision_use_head=false)")
        antialias = False
    elif mt == "vit":
        args["mlp_ratio"] = _ratio(cfg.intermediate_size, dim)
        antialias = False
    else:
        raise ConversionError(f"transformers model_type {mt!r} is not convertible (dinov2, "
                              f"dinov2_with_registers, siglip, siglip_vision_model, vit)")
    return {"format": mt, "arch": None, "args": args, "norm_eps": eps, "pooling": pooling, "antialias": antialias}


def _open_clip_spec(config: dict[str, Any], pooling: str) -> dict:
    model_cfg = config.get("model_cfg", config)
    vision = model_cfg.get("vision_cfg", {})
    name = vision.get("timm_model_name")
    if not name:
        return _open_clip_native_spec(model_cfg, vision, pooling)
    pool, proj = vision.get("timm_pool", "avg"), vision.get("timm_proj", "linear")
    if pool in ("abs_attn", "rot_attn"):
        raise ConversionError(f"open_clip timm_pool={pool!r} is not convertible")
    embed_dim, args = model_cfg["embed_dim"], {}
    if proj in ("linear", "mlp"):  # open_clip resets the trunk's classifier (keeping its norm placement)
        spec_proj = {"type": proj, "dim": embed_dim, "bias": bool(vision.get("timm_proj_bias", False)), "key": proj}
        if pool:
            args["fc_norm"] = False
    elif proj != "none":  # no extra projection: the trunk's own head (with bias) projects
        spec_proj = {"type": "linear", "dim": embed_dim, "bias": True, "key": "trunk_head"}
    else:
        spec_proj = None
    if pooling != "token_proj":  # the preset asks for the trunk's features only
        spec_proj = None
    if pool and pool != "token":  # the tower's own pooling (e.g. avg), then the projection
        pooling = pool
    # open_clip builds the trunk at the timm model's own default size (it passes no img_size): so do we
    return {"format": "open_clip", "arch": name, "args": args, "pooling": pooling, "proj": spec_proj,
            "antialias": True, "native_size": True}


def _open_clip_native_spec(model_cfg: dict[str, Any], vision: dict[str, Any], pooling: str) -> dict:
    """open_clip's own ViT (CLIP): ln_pre -> timm ``pre_norm``; ln_post then the class token (or the patch
    mean) -> timm's final norm and pooling; ``proj`` (a matrix) -> :attr:`FoundationViT.proj`."""
    for flag in ("attentional_pool", "final_ln_after_pool", "no_ln_pre"):
        if vision.get(flag):
            raise ConversionError(f"open_clip vision_cfg.{flag} is not convertible")
    pool = vision.get("pool_type", "tok")
    if pool not in ("tok", "avg") or isinstance(vision.get("layers", 12), (list, tuple)):
        raise ConversionError("open_clip vision tower: only ViTs with pool_type tok or avg are convertible")
    width = vision.get("width", 768)
    args = {"img_size": vision.get("image_size", 224), "patch_size": vision.get("patch_size", 16), "embed_dim": width,
            "depth": vision.get("layers", 12), "num_heads": width // vision.get("head_width", 64),
            "mlp_ratio": _ratio(int(width * vision.get("mlp_ratio", 4.0)), width), "pre_norm": True,
            "init_values": vision.get("ls_init_value"), "fc_norm": False,
            "act_layer": "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"}
    proj = {"type": "linear", "dim": model_cfg["embed_dim"], "bias": False, "key": "matrix"} \
        if pooling == "token_proj" else None
    return {"format": "open_clip", "arch": None, "args": args, "norm_eps": 1e-5,
            "pooling": "avg" if pool == "avg" else pooling, "proj": proj, "antialias": True}
