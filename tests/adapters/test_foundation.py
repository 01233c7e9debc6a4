"""Foundation presets: the table, and each source format converted exactly into timm.

Every reference embedding comes from the source library itself (transformers, open_clip, timm), run on
a tiny model saved into a folder laid out as its Hub repo; the converted timm model must match it within
1e-4 at the repo's input size (and at another size, where the source interpolates its positions)."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest
import torch

from adapters import create_backbone, data_config
from adapters.backbones import BackboneError, backbone_family
from adapters.core import family_of
from adapters.foundation import PRESETS, find_preset
from tests.helpers import foundation_repos as R

REQUIRED = ["rad-dino", "biomedclip", "medsiglip", "uni", "uni2-h", "virchow2", "h-optimus-0", "prov-gigapath",
            "phikon-v2", "retfound-cfp", "retfound-oct", "mrm", "cxr-mae", "dinov2-base", "dinov3-vitb16"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPEFT_CACHE", str(tmp_path / "medpeft-cache"))


SMALL = dict(embed_dim=32, depth=2, num_heads=2)  # a small model of the family: the repo's config says so


def _swiglu_args():
    from timm.layers import SwiGLUPacked

    return dict(init_values=1e-5, reg_tokens=4, mlp_ratio=5.3375, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU,
                dynamic_img_size=True, **SMALL)



# (case, preset, builder, builder kwargs, input size)
CASES = [
    ("dinov2", "rad-dino", R.dinov2_repo, {}, 28),
    ("dinov2-swiglu", "phikon-v2", R.dinov2_repo, {"swiglu": True}, 28),
    ("dinov2-registers", "dinov2-reg-base", R.dinov2_repo, {"registers": 4}, 28),
    ("siglip-vision", "medsiglip", R.siglip_repo, {}, 32),
    ("siglip-full", "medsiglip", R.siglip_repo, {"full": True}, 32),
    ("vit", "phikon", R.vit_repo, {}, 32),
    ("open_clip", "biomedclip", R.open_clip_repo, {}, 224),
    ("open_clip-avg-mlp", "biomedclip", R.open_clip_repo, {"timm_model": "test_vit", "timm_pool": "avg",
                                                           "proj": "mlp"}, 160),
    ("open_clip-native", "biomedclip", R.open_clip_repo, {"timm_model": None, "quick_gelu": True,
                                                          "ls_init_value": 0.1}, 32),
    ("timm-uni", "uni", R.timm_repo, {"init_values": 1e-5, "dynamic_img_size": True, "img_size": 64, **SMALL}, 64),
    ("timm-virchow2", "virchow2", R.timm_repo, {"pooling": "cls_avg", "img_size": 64, **_swiglu_args()}, 64),
]
SLOW = {"open_clip"}  # ViT-Tiny (5M parameters) at 224 px: seconds


@pytest.mark.parametrize("case,preset,builder,kwargs,size",
                         [pytest.param(*c, id=c[0], marks=[pytest.mark.slow] if c[0] in SLOW else []) for c in CASES])
def test_conversion_equals_source_library(tmp_path, case, preset, builder, kwargs, size):
    folder, embed = builder(tmp_path / "repo", **kwargs)
    model = create_backbone(preset, num_classes=0, init_checkpoint=str(folder)).eval()
    assert family_of(model) == "vit"
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, ref = model(x), embed(x)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4, case
    assert ref.abs().max().item() > 1e-2  # a real signal, not zeros
    # a fresh head on the same embedding
    head = create_backbone(preset, num_classes=3, init_checkpoint=str(folder)).eval()
    with torch.no_grad():
        assert head(x).shape == (2, 3)
        assert torch.allclose(head.forward_head(head.forward_features(x), pre_logits=True), ours, atol=1e-5)


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_other_size_interpolates_as_transformers(tmp_path, registers):
    folder, embed = R.dinov2_repo(tmp_path / "repo", registers=registers, preprocessor=False)
    model = create_backbone("rad-dino", 0, init_checkpoint=str(folder), img_size=56).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert (model(x) - embed(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("regs", [0, 4])
def test_dynamic_img_size_resamples_as_timm(tmp_path, regs):
    """UNI / Virchow2 keep their authors' dynamic_img_size: any input size, resampled as timm does."""
    folder, embed = R.timm_repo(tmp_path / "repo", init_values=1e-5, dynamic_img_size=True, img_size=64,
                                reg_tokens=regs, no_embed_class=regs > 0, **SMALL)
    model = create_backbone("uni", 0, init_checkpoint=str(folder)).eval()
    for size in (64, 96):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert (model(x) - embed(x)).abs().max().item() < 1e-4


def test_siglip_other_size_interpolates_as_transformers(tmp_path):
    from transformers import SiglipVisionModel

    folder, _ = R.siglip_repo(tmp_path / "repo")
    source = SiglipVisionModel.from_pretrained(folder).eval()
    model = create_backbone("medsiglip", 0, init_checkpoint=str(folder), img_size=48).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = source(pixel_values=x, interpolate_pos_encoding=True).pooler_output
        assert (model(x) - ref).abs().max().item() < 1e-4


def test_preprocessing_comes_from_the_repo(tmp_path):
    folder, _ = R.dinov2_repo(tmp_path / "repo")
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    cfg.update(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg))
    dc = data_config(create_backbone("rad-dino", 2, init_checkpoint=str(folder)))
    assert dc["mean"] == pytest.approx([0.1, 0.2, 0.3]) and dc["std"] == pytest.approx([0.4, 0.5, 0.6])
    assert dc["input_size"] == [3, 28, 28] and dc["interpolation"] == "bicubic"
    # no copy of the repo: the preset's own (RAD-DINO's processor: 518 px, its mean / std)
    with torch.device("meta"):
        dc = data_config(create_backbone("rad-dino", 2, pretrained=False))
    assert dc["input_size"] == [3, 518, 518] and dc["mean"] == pytest.approx([0.5307] * 3)


def test_conversion_is_cached_as_safetensors(tmp_path, monkeypatch):
    import adapters.foundation_hub as fh

    folder, embed = R.dinov2_repo(tmp_path / "repo")
    first = create_backbone("rad-dino", 0, init_checkpoint=str(folder)).eval()
    cached = list(fh.cache_dir().glob("*.safetensors"))
    assert len(cached) == 1

    def no_source(paths):
        raise AssertionError("the source weights were read again")

    monkeypatch.setattr(fh, "read_weights", no_source)
    again = create_backbone("rad-dino", 0, init_checkpoint=str(folder)).eval()
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(first(x), again(x))


def test_architecture_is_read_from_the_repo_config(tmp_path):
    """A larger model of the family (3 layers, width 48) loads through the same preset."""
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, image_size=28,
                                     patch_size=14))
    R._randomise(model)
    model.eval().save_pretrained(tmp_path / "big")
    ours = create_backbone("rad-dino", 0, init_checkpoint=str(tmp_path / "big")).eval()
    assert len(ours.blocks) == 3 and ours.num_features == 48
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert (ours(x) - model(pixel_values=x).pooler_output).abs().max().item() < 1e-4


def test_listing_has_every_preset_with_licence_and_gating():
    from adapters.__main__ import main

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["backbones", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(buf.getvalue())}
    for name in REQUIRED:
        assert name in rows, name
        for key in ("hub_id", "license", "gated", "source", "pooling", "mean", "std", "img_size", "modality",
                    "timm_args"):
            assert key in rows[name]
    assert rows["rad-dino"]["hub_id"] == "microsoft/rad-dino" and rows["uni"]["gated"] is True
    assert rows["uni"]["timm_args"] == {"init_values": 1e-5, "dynamic_img_size": True}
    assert rows["mrm"]["hub_id"] is None and "--init-checkpoint" in rows["mrm"]["get"]
    buf = io.StringIO()
    with redirect_stdout(buf):
        main(["backbones"])
    text = buf.getvalue()
    for name in REQUIRED:
        assert name in text
    assert "cc-by-nc-nd-4.0" in text and "gated" in text


def test_names_resolve_to_presets():
    assert find_preset("microsoft/rad-dino").name == "rad-dino"
    assert find_preset("hf-hub:MahmoodLab/UNI").name == "uni"
    assert find_preset("RAD-DINO").name == "rad-dino"
    assert find_preset("vit_base_patch16_224") is None
    assert backbone_family("biomedclip") == "vit"


EMBED = {"rad-dino": 768, "biomedclip": 512, "medsiglip": 1152, "uni": 1024, "uni2-h": 1536, "virchow2": 2560,
         "h-optimus-0": 1536, "prov-gigapath": 1536, "phikon-v2": 1024, "phikon": 768, "retfound-cfp": 1024,
         "retfound-oct": 1024, "mrm": 768, "cxr-mae": 768, "dinov2-base": 768, "dinov2-large": 1024,
         "dinov2-reg-base": 768}
# parameter counts (millions) of the published image encoders (ViT-L 303M, UNI2-h 681M, Virchow2 632M,
# H-optimus-0 / Prov-GigaPath 1.13B, SigLIP So400m vision tower + head 429M); DINOv2-B at 224 px has its
# position grid resampled from 37x37 to 16x16 (86.6M at 518 px)
PARAMS = {"rad-dino": 86.58, "uni": 303.35, "uni2-h": 681.39, "virchow2": 631.24, "h-optimus-0": 1134.77,
          "prov-gigapath": 1134.95, "phikon-v2": 303.35, "medsiglip": 428.57, "dinov2-base": 85.72}


@pytest.mark.parametrize("name", [n for n in PRESETS if n != "dinov3-vitb16"])
def test_every_preset_builds_with_its_authors_architecture(name):
    with torch.device("meta"):  # the full-size architecture, no memory
        model = create_backbone(name, 0, pretrained=False)
    assert model.num_features == EMBED[name]
    if name in PARAMS:
        total = sum(p.numel() for p in model.parameters()) / 1e6
        assert total == pytest.approx(PARAMS[name], rel=0.001), total


def test_presets_without_a_hub_repo_say_where_to_get_the_file():
    with pytest.raises(BackboneError, match="MRM.pth.*--init-checkpoint"):
        create_backbone("mrm", 2, pretrained=True)


def test_non_vit_timm_architecture_is_refused_clearly():
    with torch.device("meta"), pytest.raises(BackboneError, match="not a VisionTransformer"):
        create_backbone("dinov3-vitb16", 0, pretrained=False)


@pytest.mark.slow
def test_mae_preset_reads_the_checkpoint_as_mae_fine_tuning(tmp_path):
    import timm

    src = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    R._randomise(src)
    state = {"model": {**src.state_dict(), "decoder_embed.weight": torch.zeros(2, 2), "mask_token": torch.zeros(1)}}
    torch.save(state, tmp_path / "MRM.pth")
    model = create_backbone("mrm", 2, init_checkpoint=str(tmp_path / "MRM.pth"))
    report = model.medpeft_init_report
    assert report.loaded > 100 and "decoder_embed.weight" in report.dropped
    assert torch.equal(model.blocks[3].attn.qkv.weight, src.blocks[3].attn.qkv.weight)
    assert data_config(model)["mean"] == pytest.approx([0.4978] * 3) and model.global_pool == "avg"
