"""Every preset converts against its source library: a small model of its family (its authors' extra
arguments included: registers, SwiGLU, LayerScale, pooling), saved as its Hub repo is laid out, loaded by
the preset's short name and compared with the source's embedding (within 1e-4)."""
from __future__ import annotations

import json

import pytest
import torch

from adapters import create_backbone
from adapters.foundation import PRESETS
from tests.helpers import foundation_repos as R

SMALL = dict(embed_dim=32, depth=2, num_heads=2)


def _swiglu(**extra):
    from timm.layers import SwiGLUPacked

    return dict(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU, **extra)


def _mae_repo(folder, arch="vit_base_patch16_224", **args):
    """An MAE-style checkpoint (``{"model": ...}`` with its decoder) beside a timm config.json."""
    import timm

    src = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="avg", fc_norm=True, **args).eval()
    R._randomise(src)
    folder.mkdir(parents=True)
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("fc_norm.")}
    state.update({"decoder_embed.weight": torch.zeros(4, 4), "mask_token": torch.zeros(1, 1, 4)})
    torch.save({"model": state, "epoch": 1}, folder / "checkpoint.pth")
    (folder / "config.json").write_text(json.dumps({"architecture": arch, "model_args": args}))
    src.fc_norm.reset_parameters()  # MAE fine-tuning starts fc_norm fresh (weight 1, bias 0)
    return folder, lambda x: src.forward_head(src.forward_features(x), pre_logits=True)


REPOS = {  # preset -> (builder, kwargs, input size)
    "rad-dino": (R.dinov2_repo, {}, 28),
    "dinov2-base": (R.dinov2_repo, {}, 28),
    "dinov2-large": (R.dinov2_repo, {}, 28),
    "phikon-v2": (R.dinov2_repo, {"patch": 16, "image_size": 32}, 32),
    "dinov2-reg-base": (R.dinov2_repo, {"registers": 4}, 28),
    "phikon": (R.vit_repo, {}, 32),
    "medsiglip": (R.siglip_repo, {"full": True}, 32),
    "biomedclip": (R.open_clip_repo, {"timm_model": "test_vit"}, 160),
    "uni": (R.timm_repo, {"arch": "vit_large_patch16_224", "init_values": 1e-5, "dynamic_img_size": True,
                          "img_size": 64, **SMALL}, 64),
    "uni2-h": (R.timm_repo, {"arch": "vit_giant_patch14_224", "img_size": 56, "init_values": 1e-5,
                             "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "reg_tokens": 8,
                             "dynamic_img_size": True, **_swiglu(**SMALL)}, 56),
    "virchow2": (R.timm_repo, {"arch": "vit_huge_patch14_224", "pooling": "cls_avg", "img_size": 56,
                               "init_values": 1e-5, "mlp_ratio": 5.3375, "reg_tokens": 4, "dynamic_img_size": True,
                               **_swiglu(**SMALL)}, 56),
    "h-optimus-0": (R.timm_repo, {"arch": "vit_giant_patch14_reg4_dinov2", "img_size": 56, "init_values": 1e-5,
                                  **SMALL}, 56),
    "prov-gigapath": (R.timm_repo, {"arch": "vit_giant_patch14_dinov2", "img_size": 64, "patch_size": 16,
                                    "init_values": 1e-5, "mlp_ratio": 5.33334, **SMALL}, 64),
    "retfound-cfp": (_mae_repo, {"arch": "vit_large_patch16_224", "img_size": 64, **SMALL}, 64),
    "retfound-oct": (_mae_repo, {"arch": "vit_large_patch16_224", "img_size": 64, **SMALL}, 64),
    "mrm": (_mae_repo, {"img_size": 64, **SMALL}, 64),
    "cxr-mae": (_mae_repo, {"img_size": 64, **SMALL}, 64),
}


def test_every_convertible_preset_has_a_case():
    assert set(REPOS) == set(PRESETS) - {"dinov3-vitb16"}  # DINOv3 (timm Eva, RoPE) is listed, not convertible


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REPOS))
def test_preset_converts_against_its_source_library(tmp_path, monkeypatch, name):
    monkeypatch.setenv("MEDPEFT_CACHE", str(tmp_path / "cache"))
    builder, kwargs, size = REPOS[name]
    folder, embed = builder(tmp_path / "repo", **kwargs)
    model = create_backbone(name, 0, init_checkpoint=str(folder)).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, ref = model(x), embed(x)
    assert ours.shape == ref.shape and (ours - ref).abs().max().item() < 1e-4
