"""State-dict mappings of each source format onto timm's ``VisionTransformer`` names (the specs, the
model and the rules are in :mod:`adapters.convert`)."""
from __future__ import annotations

from typing import Any

import torch

from .convert import ConversionError


def _strip(state: dict[str, torch.Tensor], anchor: str) -> dict[str, torch.Tensor]:
    """Keys without the prefix before ``anchor`` (``dinov2.``, ``vision_model.``, ``vit.`` ...)."""
    found = [k for k in state if k.endswith(anchor)]
    if not found:
        raise ConversionError(f"the weights have no {anchor!r}: not a checkpoint of this format "
                              f"(keys e.g. {list(state)[:4]})")
    prefix = found[0][: -len(anchor)]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _first(state, *names):
    for n in names:
        if n in state:
            return state[n]
    raise ConversionError(f"missing tensor: one of {names}")


def _qkv(out: dict, dst: str, state: dict, q: str, k: str, v: str) -> None:
    for kind in ("weight", "bias"):
        parts = [state.get(f"{n}.{kind}") for n in (q, k, v)]
        if all(p is not None for p in parts):
            out[f"{dst}.{kind}"] = torch.cat(parts, dim=0)


def _copy(out: dict, dst: str, state: dict, src: str) -> None:
    for kind in ("weight", "bias"):
        if f"{src}.{kind}" in state:
            out[f"{dst}.{kind}"] = state[f"{src}.{kind}"]


def convert_state(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The source's tensors under timm's names (the source grid; :func:`resample_pos_embed` resizes)."""
    fmt = spec["format"]
    if fmt in ("dinov2", "dinov2_with_registers", "vit"):
        return _dinov2_or_vit_state(spec, _strip(state, "embeddings.cls_token"))
    if fmt == "siglip_vision_model":
        return _siglip_state(spec, _strip(state, "embeddings.patch_embedding.weight"))
    if fmt == "open_clip":
        return _open_clip_state(spec, state)
    if fmt == "timm":  # already timm's names (timm's checkpoint_filter_fn runs at load)
        return {k.removeprefix("module."): v for k, v in state.items()}
    raise ConversionError(f"no state mapping for format {fmt!r}")


def _dinov2_or_vit_state(spec: dict, s: dict) -> dict:
    out: dict[str, torch.Tensor] = {}
    cls, pos = s["embeddings.cls_token"], s["embeddings.position_embeddings"]
    if spec["args"].get("no_embed_class"):  # registers: timm adds no position to prefix tokens
        out["cls_token"], out["pos_embed"] = cls + pos[:, :1], pos[:, 1:]
        out["reg_token"] = s["embeddings.register_tokens"]
    else:
        out["cls_token"], out["pos_embed"] = cls, pos
    _copy(out, "patch_embed.proj", s, "embeddings.patch_embeddings.projection")
    vit = spec["format"] == "vit"
    for i in range(spec["args"]["depth"]):
        p, b = f"encoder.layer.{i}.", f"blocks.{i}."
        a = p + "attention.attention." if f"{p}attention.attention.query.weight" in s else p + "attention."
        names = ("query", "key", "value") if f"{a}query.weight" in s else ("q_proj", "k_proj", "v_proj")
        _qkv(out, b + "attn.qkv", s, *(a + n for n in names))
        _copy(out, b + "attn.proj", s, p + "attention.output.dense" if f"{p}attention.output.dense.weight" in s
              else p + "attention.o_proj")
        if vit:
            _copy(out, b + "norm1", s, p + "layernorm_before")
            _copy(out, b + "norm2", s, p + "layernorm_after")
            _copy(out, b + "mlp.fc1", s, p + "intermediate.dense")
            _copy(out, b + "mlp.fc2", s, p + "output.dense")
            continue
        _copy(out, b + "norm1", s, p + "norm1")
        _copy(out, b + "norm2", s, p + "norm2")
        out[b + "ls1.gamma"] = _first(s, p + "layer_scale1.lambda1")
        out[b + "ls2.gamma"] = _first(s, p + "layer_scale2.lambda1")
        if spec["args"].get("mlp_layer") == "swiglu_packed":
            if f"{p}mlp.weights_in.weight" in s:  # [gate; up]: silu(first half) * second half
                _copy(out, b + "mlp.fc1", s, p + "mlp.weights_in")
                _copy(out, b + "mlp.fc2", s, p + "mlp.weights_out")
            else:
                for kind in ("weight", "bias"):
                    out[f"{b}mlp.fc1.{kind}"] = torch.cat([s[f"{p}mlp.gate_proj.{kind}"], s[f"{p}mlp.up_proj.{kind}"]])
                _copy(out, b + "mlp.fc2", s, p + "mlp.down_proj")
        else:
            _copy(out, b + "mlp.fc1", s, p + "mlp.fc1")
            _copy(out, b + "mlp.fc2", s, p + "mlp.fc2")
    _copy(out, "norm", s, "layernorm")
    return out


def _siglip_state(spec: dict, s: dict) -> dict:
    out: dict[str, torch.Tensor] = {}
    _copy(out, "patch_embed.proj", s, "embeddings.patch_embedding")
    out["pos_embed"] = s["embeddings.position_embedding.weight"].unsqueeze(0)
    for i in range(spec["args"]["depth"]):
        p, b = f"encoder.layers.{i}.", f"blocks.{i}."
        _copy(out, b + "norm1", s, p + "layer_norm1")
        _qkv(out, b + "attn.qkv", s, p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj")
        _copy(out, b + "attn.proj", s, p + "self_attn.out_proj")
        _copy(out, b + "norm2", s, p + "layer_norm2")
        _copy(out, b + "mlp.fc1", s, p + "mlp.fc1")
        _copy(out, b + "mlp.fc2", s, p + "mlp.fc2")
    _copy(out, "norm", s, "post_layernorm")
    if spec["pooling"] == "map":
        dim = spec["args"]["embed_dim"]
        out["attn_pool.latent"] = s["head.probe"]
        w, bias = s["head.attention.in_proj_weight"], s["head.attention.in_proj_bias"]
        out["attn_pool.q.weight"], out["attn_pool.kv.weight"] = w[:dim], w[dim:]
        out["attn_pool.q.bias"], out["attn_pool.kv.bias"] = bias[:dim], bias[dim:]
        _copy(out, "attn_pool.proj", s, "head.attention.out_proj")
        _copy(out, "attn_pool.norm", s, "head.layernorm")
        _copy(out, "attn_pool.mlp.fc1", s, "head.mlp.fc1")
        _copy(out, "attn_pool.mlp.fc2", s, "head.mlp.fc2")
    return out


def _open_clip_native_state(spec: dict, s: dict) -> dict:
    out = {"patch_embed.proj.weight": s["visual.conv1.weight"], "cls_token": s["visual.class_embedding"].reshape(1, 1, -1),
           "pos_embed": s["visual.positional_embedding"].unsqueeze(0)}
    _copy(out, "norm_pre", s, "visual.ln_pre")
    for i in range(spec["args"]["depth"]):
        p, b = f"visual.transformer.resblocks.{i}.", f"blocks.{i}."
        _copy(out, b + "norm1", s, p + "ln_1")
        out[b + "attn.qkv.weight"], out[b + "attn.qkv.bias"] = s[p + "attn.in_proj_weight"], s[p + "attn.in_proj_bias"]
        _copy(out, b + "attn.proj", s, p + "attn.out_proj")
        _copy(out, b + "norm2", s, p + "ln_2")
        _copy(out, b + "mlp.fc1", s, p + "mlp.c_fc")
        _copy(out, b + "mlp.fc2", s, p + "mlp.c_proj")
        for n in ("1", "2"):
            if f"{p}ls_{n}.gamma" in s:
                out[f"{b}ls{n}.gamma"] = s[f"{p}ls_{n}.gamma"]
    _copy(out, "norm", s, "visual.ln_post")
    if spec.get("proj"):
        out["proj.weight"] = s["visual.proj"].t().contiguous()
    return out


def _open_clip_state(spec: dict, state: dict) -> dict:
    if "visual.conv1.weight" in state:
        return _open_clip_native_state(spec, state)
    prefix = "visual.trunk."
    if not any(k.startswith(prefix) for k in state):
        raise ConversionError(f"the weights have no {prefix}* tensors: not an open_clip model with a timm image "
                              f"tower (keys e.g. {list(state)[:4]})")
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k.startswith(prefix + "head.")}
    proj = spec.get("proj")
    if proj:
        src = {"linear": "visual.head.proj", "mlp": "visual.head.mlp", "trunk_head": prefix + "head"}[proj["key"]]
        for key, value in state.items():
            if key.startswith(src + "."):
                out["proj." + key[len(src) + 1:]] = value
    return out
