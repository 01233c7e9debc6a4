"""Foundation checkpoints: MAE-style .pth / state dict / safetensors into a timm ViT, safely."""
from __future__ import annotations

import builtins
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from adapters import apply_method, create_backbone
from adapters.__main__ import main as adapters_main
from adapters.backbones import TINY_VIT
from adapters.checkpoints import (NORMALIZATION_PRESETS, CheckpointError, convert_checkpoint, load_init_checkpoint,
                                  normalization, read_checkpoint)
from adapters.io import AdapterConfig, load_adapter, save_adapter
from tests.helpers.checkpoints import DIM, encoder_state, mae_checkpoint



def test_mae_checkpoint_loads_with_report_and_exact_weights(tmp_path):
    encoder = encoder_state()
    mae_checkpoint(tmp_path / "mae.pth", encoder)
    model = create_backbone(TINY_VIT, 3, init_checkpoint=str(tmp_path / "mae.pth"))
    report = model.medpeft_init_report
    # MAE fine-tuning with global pooling: fresh head and fc_norm, the pre-training `norm` unused.
    assert model.global_pool == "avg" and not isinstance(model.fc_norm, torch.nn.Identity)
    assert report.missing == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert report.unexpected == ["norm.bias", "norm.weight"]
    assert sorted(report.dropped) == sorted(f"module.{k}" for k in (
        "mask_token", "decoder_embed.weight", "decoder_embed.bias", "decoder_pos_embed",
        "decoder_blocks.0.attn.qkv.weight", "decoder_norm.weight", "decoder_pred.weight"))
    assert report.stripped_prefixes == ["module."] and report.pos_embed is None
    own = model.state_dict()
    shared = [k for k in encoder if k in own]
    assert report.loaded == len(shared) == len(encoder) - 2
    for k in shared:
        assert torch.equal(own[k], encoder[k]), k


def test_token_pooling_selectable_and_drop_path():
    path_free = create_backbone(TINY_VIT, 3, pretrained=False, global_pool="token", drop_path_rate=0.1)
    assert path_free.global_pool == "token" and isinstance(path_free.fc_norm, torch.nn.Identity)
    assert path_free.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)


def test_token_pooling_report(tmp_path):
    encoder = encoder_state()
    save_file(encoder, str(tmp_path / "enc.safetensors"))
    model = create_backbone(TINY_VIT, 3, init_checkpoint=str(tmp_path / "enc.safetensors"), global_pool="token")
    assert model.medpeft_init_report.missing == ["head.bias", "head.weight"]
    assert model.medpeft_init_report.unexpected == []
    assert torch.equal(model.norm.weight, encoder["norm.weight"])


def test_bare_state_dict_with_encoder_prefix(tmp_path):
    encoder = encoder_state(seed=3)
    torch.save({f"encoder.{k}": v for k, v in encoder.items()}, tmp_path / "bare.pth")
    model = create_backbone(TINY_VIT, 2, init_checkpoint=str(tmp_path / "bare.pth"))
    assert model.medpeft_init_report.stripped_prefixes == ["encoder."]
    assert torch.equal(model.blocks[0].attn.qkv.weight, encoder["blocks.0.attn.qkv.weight"])


def test_pos_embed_interpolated_to_target_grid_as_mae(tmp_path):
    encoder = encoder_state(img_size=32)  # 4x4 patches of 8 px
    mae_checkpoint(tmp_path / "mae.pth", encoder)
    model = create_backbone(TINY_VIT, 3, img_size=64, init_checkpoint=str(tmp_path / "mae.pth"))
    assert model.medpeft_init_report.pos_embed == "interpolated 4x4 -> 8x8"
    # MAE's util/pos_embed.py interpolate_pos_embed, written out independently.
    old = encoder["pos_embed"]
    tokens = old[:, 1:].reshape(1, 4, 4, DIM).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=(8, 8), mode="bicubic", align_corners=False)
    expected = torch.cat([old[:, :1], tokens.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
    assert torch.allclose(model.pos_embed, expected, atol=1e-6)


class RunsCode:
    """A pickle that would run code when loaded: MAE-style checkpoint with a payload."""

    def __init__(self, target: str, via_os: bool):
        self.target, self.via_os = target, via_os

    def __reduce__(self):
        if self.via_os:
            return os.system, (f"touch {self.target}",)
        return builtins.exec, (f"open({self.target!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("via_os", [True, False])
def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, via_os):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": encoder_state(), "payload": RunsCode(str(marker), via_os)}, path)
    with pytest.raises(CheckpointError, match="system" if via_os else "exec") as err:
        read_checkpoint(path)
    assert "convert-checkpoint" in str(err.value) or via_os
    with pytest.raises(CheckpointError):
        create_backbone(TINY_VIT, 2, init_checkpoint=str(path))
    if via_os:  # os/sys: refused even by the converter
        with pytest.raises(CheckpointError, match="tries to run code"):
            convert_checkpoint(path, tmp_path / "out.safetensors")
    else:  # the converter keeps the tensors, the payload becomes an inert placeholder
        assert convert_checkpoint(path, tmp_path / "out.safetensors") == len(encoder_state())
    assert not marker.exists()


def test_convert_checkpoint_cli(tmp_path, capsys):
    encoder = encoder_state(seed=5)
    mae_checkpoint(tmp_path / "mae.pth", encoder)
    assert adapters_main(["convert-checkpoint", str(tmp_path / "mae.pth"), str(tmp_path / "mae.safetensors")]) == 0
    tensors = load_file(str(tmp_path / "mae.safetensors"))
    assert torch.equal(tensors["module.blocks.1.mlp.fc1.weight"], encoder["blocks.1.mlp.fc1.weight"])
    assert "module.decoder_pred.weight" in tensors  # conversion keeps every tensor; loading drops them
    model = create_backbone(TINY_VIT, 3, init_checkpoint=str(tmp_path / "mae.safetensors"))
    assert model.medpeft_init_report.unexpected == ["norm.bias", "norm.weight"]
    assert adapters_main(["convert-checkpoint", str(tmp_path / "missing.pth"), str(tmp_path / "x.safetensors")]) == 2
    assert "error: checkpoint not found" in capsys.readouterr().err


def test_no_matching_key_and_wrong_shapes_are_clear_errors(tmp_path):
    torch.save({"model": {"conv1.weight": torch.zeros(8, 3, 7, 7)}}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="no key of the checkpoint matches"):
        create_backbone(TINY_VIT, 2, init_checkpoint=str(tmp_path / "resnet.pth"))
    wide = create_backbone(TINY_VIT, 0, pretrained=False, embed_dim=48).state_dict()
    save_file(wide, str(tmp_path / "wide.safetensors"))
    with pytest.raises(CheckpointError, match="wrong shape"):
        create_backbone(TINY_VIT, 2, init_checkpoint=str(tmp_path / "wide.safetensors"))
    with pytest.raises(CheckpointError, match="not found"):
        create_backbone(TINY_VIT, 2, init_checkpoint=str(tmp_path / "nowhere.pth"))


def test_normalization_presets():
    assert normalization("MRM") == ([0.4978] * 3, [0.2449] * 3)
    assert normalization("cxr_mae") == ([0.4785] * 3, [0.2834] * 3)
    assert set(NORMALIZATION_PRESETS) >= {"mrm", "cxr_mae", "imagenet"}
    with pytest.raises(CheckpointError, match="unknown normalisation preset"):
        normalization("nope")


def test_adapter_config_rebuilds_the_same_model(tmp_path):
    mae_checkpoint(tmp_path / "mae.pth", encoder_state(seed=7))
    source = str(tmp_path / "mae.pth")
    torch.manual_seed(1)
    model = apply_method(create_backbone(TINY_VIT, 3, init_checkpoint=source), "lora", targets="qv", alpha=32,
                         dropout=0.1, rank=4)
    report = model.base_model.model.medpeft_init_report
    cfg = AdapterConfig(method="lora", backbone=TINY_VIT, num_classes=3, init_checkpoint=source,
                        init_report=report.to_dict(), global_pool="avg", fc_norm=True,
                        data_config={"input_size": [3, 32, 32], "mean": [0.4978] * 3, "std": [0.2449] * 3})
    save_adapter(model, tmp_path / "adapter", cfg)
    loaded, loaded_cfg = load_adapter(tmp_path / "adapter")
    assert loaded_cfg.init_report["unexpected"] == ["norm.bias", "norm.weight"]
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.allclose(model(x), loaded(x), atol=1e-6)
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "foundation checkpoint" in card and "0.4978" in card
    moved = tmp_path / "moved.pth"
    (tmp_path / "mae.pth").rename(moved)
    with pytest.raises(Exception, match="init_checkpoint="):
        load_adapter(tmp_path / "adapter")
    again, _ = load_adapter(tmp_path / "adapter", init_checkpoint=str(moved))
    assert torch.allclose(model(x), again(x), atol=1e-6)


def test_random_weights_are_reproducible_and_leave_the_callers_random_state():
    """An adapter saves only what it trained: a --no-pretrained base must come back identical."""
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = create_backbone(TINY_VIT, 3, pretrained=False).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(7)  # another training seed: the same random base
    b = create_backbone(TINY_VIT, 3, pretrained=False).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
