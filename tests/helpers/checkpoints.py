"""Tiny foundation checkpoints in the formats MED-PEFT's models ship in (MAE's main_pretrain.py)."""
from __future__ import annotations

import argparse

import torch

from adapters import create_backbone
from adapters.backbones import TINY_VIT

DIM = 32  # TINY_VIT width


def encoder_state(seed: int = 0, img_size: int = 32) -> dict[str, torch.Tensor]:
    """The encoder of an MAE: a ViT without head (token pooling, so it keeps its final `norm`)."""
    torch.manual_seed(seed)
    model = create_backbone(TINY_VIT, 0, pretrained=False, img_size=img_size)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["pos_embed"] = torch.randn_like(state["pos_embed"])  # distinct from any fresh init
    return state


def mae_checkpoint(path, encoder: dict[str, torch.Tensor]) -> None:
    """As MAE's main_pretrain.py saves it (DDP-wrapped model: `module.` prefix), decoder included."""
    model = {f"module.{k}": v for k, v in encoder.items()}
    model.update({"module.mask_token": torch.zeros(1, 1, DIM),
                  "module.decoder_embed.weight": torch.randn(16, DIM), "module.decoder_embed.bias": torch.zeros(16),
                  "module.decoder_pos_embed": torch.zeros(1, 17, 16),
                  "module.decoder_blocks.0.attn.qkv.weight": torch.randn(48, 16),
                  "module.decoder_norm.weight": torch.ones(16), "module.decoder_pred.weight": torch.randn(192, 16)})
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "params": [0, 1]}]},
                "epoch": 799, "scaler": {"scale": 65536.0, "growth_factor": 2.0},
                "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75, norm_pix_loss=True)}, path)
