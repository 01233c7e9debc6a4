"""Tiny foundation-model repos built with each source library itself, laid out as their Hub repos.

Each builder writes a folder (config + weights + preprocessing config, as the real repo has them) and
returns ``(folder, embed)``: ``embed(x)`` is the source library's own embedding of a batch ``x`` (the one
the preset names), the reference the converted timm model must equal.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)


def _preprocessor(folder: Path, size: int, mean=(0.5307,) * 3, std=(0.2583,) * 3) -> None:
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "image_mean": list(mean), "image_std": list(std), "resample": 3,
        "size": {"shortest_edge": size}, "image_processor_type": "BitImageProcessor"}))


def _randomise(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial values everywhere (LayerScale, norms and biases too), so a mis-mapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def dinov2_repo(folder: Path, registers: int = 0, swiglu: bool = False, image_size: int = 28, patch: int = 14,
                preprocessor: bool = True, **extra):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    args = dict(TINY, image_size=image_size, patch_size=patch, layerscale_value=0.5, **extra)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers,
                                                                   use_swiglu_ffn=swiglu, **args))
    else:
        model = Dinov2Model(Dinov2Config(use_swiglu_ffn=swiglu, **args))
    _randomise(model)
    model.eval().save_pretrained(folder)
    if preprocessor:
        _preprocessor(folder, image_size)
    return folder, lambda x: model(pixel_values=x).pooler_output


def siglip_repo(folder: Path, image_size: int = 32, patch: int = 8, full: bool = False):
    from transformers import SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

    vision = dict(TINY, intermediate_size=48, image_size=image_size, patch_size=patch)
    if full:  # the whole SigLIP (text + vision) in one repo, as google/medsiglip-448
        model = SiglipModel(SiglipConfig(vision_config=vision, text_config=dict(TINY, intermediate_size=48,
                                                                                 vocab_size=64)))
        _randomise(model)
        model.eval().save_pretrained(folder)
        tower = model.vision_model
    else:
        model = SiglipVisionModel(SiglipVisionConfig(**vision))
        _randomise(model)
        model.eval().save_pretrained(folder)
        tower = model
    _preprocessor(folder, image_size, (0.5,) * 3, (0.5,) * 3)
    return folder, lambda x: tower(pixel_values=x).pooler_output


def vit_repo(folder: Path, image_size: int = 32, patch: int = 8):
    from transformers import ViTConfig, ViTModel

    model = ViTModel(ViTConfig(**TINY, intermediate_size=48, image_size=image_size, patch_size=patch))
    _randomise(model)
    model.eval().save_pretrained(folder)
    return folder, lambda x: model(pixel_values=x).last_hidden_state[:, 0]


def open_clip_repo(folder: Path, timm_model: str | None = "vit_tiny_patch16_224", proj: str = "linear",
                   quick_gelu: bool = False, ls_init_value: float | None = None, timm_pool: str = ""):
    """timm_model None: open_clip's own ViT (32 px, 2 blocks of width 32), as OpenAI CLIP models."""
    import open_clip
    from safetensors.torch import save_file

    vision = ({"timm_model_name": timm_model, "timm_model_pretrained": False, "timm_pool": timm_pool, "timm_proj": proj,
               "image_size": 224} if timm_model else
              {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8,
               "ls_init_value": ls_init_value})
    cfg = {"embed_dim": 24, "vision_cfg": vision, "quick_gelu": quick_gelu,
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": cfg, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                             "std": [0.26862954, 0.26130258, 0.27577711]}}))
    from open_clip.model import CLIP

    model = CLIP(**cfg)
    _randomise(model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    source = open_clip.create_model(f"local-dir:{folder}").eval()  # open_clip's own loader reads it back
    return folder, lambda x: source.encode_image(x)


def timm_repo(folder: Path, arch: str = "vit_tiny_patch16_224", pooling: str = "token", safetensors: bool = True,
              **timm_args):
    """A timm repo as the Hub holds UNI/Virchow2: config.json (architecture, model_args) + weights."""
    import timm
    from timm.models import save_for_hf

    model = timm.create_model(arch, pretrained=False, num_classes=0, **timm_args).eval()
    _randomise(model)
    layers = [k for k, v in timm_args.items() if not isinstance(v, (int, float, bool, str))]
    save_for_hf(model, str(folder), model_args={k: "x" for k in layers}, safe_serialization=safetensors)
    config = json.loads((folder / "config.json").read_text())  # as on the Hub: layer choices are not in it
    config["model_args"] = {k: v for k, v in config.get("model_args", {}).items() if k not in layers}
    (folder / "config.json").write_text(json.dumps(config))

    def embed(x):
        tokens = model.forward_features(x)
        if pooling == "cls_avg":
            return torch.cat([tokens[:, 0], tokens[:, model.num_prefix_tokens:].mean(1)], dim=-1)
        return model.forward_head(tokens, pre_logits=True)

    return folder, embed
