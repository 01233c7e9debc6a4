"""LoRA and SSF across timm CNN families (issue 12, items 6 and 7): LoRA adapts convolutions in every
stage of ResNet, EfficientNet, MobileNetV3, ConvNeXt and DenseNet (counted on the meta device against
an analytic count over the test's own name oracle), depthwise LoRA merges exactly, and SSF's official
placement (after every conv and norm, and on the final features) merges exactly."""
from __future__ import annotations

import copy
import json
import math
import re
from contextlib import redirect_stdout
from io import StringIO

import pytest
import timm
import torch
from torch import nn

from adapters import NotMergeable, apply_method, count_params, create_backbone, merge_method
from adapters.__main__ import main
from adapters.backbones import OFFLINE_LITE0, TINY_CNN
from adapters.io import AdapterConfig, load_adapter, save_adapter
from adapters.methods.ssf import SSF, SSFHeadInput

RANK = 8
# family -> (the modules LoRA must adapt by default, how a module name maps to its stage, number of stages)
FAMILIES = {
    "resnet18": (r"conv1|layer\d\.\d\.conv[12]", r"^(layer\d)\.", 4),
    "efficientnet_b0": (r"conv_stem|conv_head|blocks\.\d\.\d\.conv_pwl?", r"^(blocks\.\d)\.", 7),
    "mobilenetv3_small_050": (r"conv_stem|conv_head|blocks\.\d\.\d\.(conv_pwl?|conv)", r"^(blocks\.\d)\.", 6),
    "convnext_atto": (r"stem\.0|stages\.\d\.downsample\.1|stages\.\d\.blocks\.\d\.mlp\.fc[12]", r"^(stages\.\d)\.", 4),
    "densenet121": (r"features\.conv0|features\.denseblock\d\.denselayer\d+\.conv2", r"^features\.(denseblock\d)\.",
                    4),
}


def meta_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, num_classes=3)


def lora_count(conv: nn.Module, r: int = RANK) -> int:
    """A (r x in x k x k) + B (out x r) of one LoRA'd conv."""
    return r * (conv.in_channels * math.prod(conv.kernel_size) + conv.out_channels)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_lora_adapts_convolutions_in_every_stage(name):
    targets, stage_of, n_stages = FAMILIES[name]
    base = meta_model(name)
    expected = [n for n, m in base.named_modules() if isinstance(m, nn.Conv2d) and re.fullmatch(targets, n)]
    head = base.get_classifier()
    analytic = sum(lora_count(base.get_submodule(n)) for n in expected) + sum(p.numel() for p in head.parameters())
    model = apply_method(base, "lora")
    wrapped = [n for n, m in model.base_model.model.named_modules() if hasattr(m, "lora_A")]
    assert wrapped == expected
    stages = {re.match(stage_of, n).group(1) for n in wrapped if re.match(stage_of, n)}
    assert len(stages) == n_stages, f"{name}: LoRA in stages {sorted(stages)}"
    assert count_params(model)[0] == analytic


def test_lora_spatial_targets_keep_the_old_rule():
    model = apply_method(meta_model("efficientnet_b0"), "lora", targets="spatial")
    assert [n for n, m in model.base_model.model.named_modules() if hasattr(m, "lora_A")] == ["conv_stem"]


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_small_050", "convnext_atto"])
def test_lora_depthwise_adds_every_depthwise_conv(name):
    base = meta_model(name)
    dw = [n for n, m in base.named_modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    plain = count_params(apply_method(copy.deepcopy(base), "lora"))[0]
    model = apply_method(base, "lora", depthwise=True)
    inner = model.base_model.model
    assert dw and all(type(inner.get_submodule(n)).__name__ == "DepthwiseLoRA" for n in dw)
    extra = sum(RANK * (math.prod(inner.get_submodule(n).base_layer.kernel_size)
                        + inner.get_submodule(n).base_layer.out_channels) for n in dw)
    assert count_params(model)[0] == plain + extra


def test_lora_depthwise_is_identity_at_init_merges_exactly_and_reloads(tmp_path):
    torch.manual_seed(0)
    base = create_backbone(OFFLINE_LITE0, 3, pretrained=False).eval()  # timm Conv2dSame depthwise convs
    model = apply_method(copy.deepcopy(base), "lora", depthwise=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), rtol=0, atol=1e-6)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.05)
        expected = model(x)
    assert not torch.allclose(expected, base(x), atol=1e-3)
    save_adapter(model, tmp_path, AdapterConfig(method="lora", backbone=OFFLINE_LITE0, num_classes=3))
    loaded, _ = load_adapter(tmp_path, model=copy.deepcopy(base))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
        merged = merge_method(model)
        got = merged(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert [type(m) for m in merged.conv_stem.modules()] == [type(m) for m in base.conv_stem.modules()]
    assert type(merged.blocks[1][0].conv_dw) is type(base.blocks[1][0].conv_dw)


def test_lora_depthwise_needs_depthwise_convs():
    from adapters import MethodError

    with pytest.raises(MethodError, match="no depthwise"):
        apply_method(meta_model("resnet18"), "lora", depthwise=True)


def test_adapters_list_lora_row_matches(capsys):
    out = StringIO()
    with redirect_stdout(out):
        assert main(["list", "--backbone", "mobilenetv3_small_050", "--num-classes", "3", "--json",
                     "--reference", "/nonexistent.csv"]) == 0
    rows = {r["method"]: r for r in json.loads(out.getvalue())}
    expected = count_params(apply_method(meta_model("mobilenetv3_small_050"), "lora"))[0]
    assert rows["lora"]["trainable"] == expected == 42_203 and rows["lora"]["mergeable"]
    assert rows["ssf"]["mergeable"]


# --- SSF placements -----------------------------------------------------------------------------

def test_ssf_official_placement_on_resnet50_and_the_norm_option():
    base = meta_model("resnet50")
    n_conv = sum(m.out_channels for m in base.modules() if isinstance(m, nn.Conv2d))
    n_bn = sum(m.num_features for m in base.modules() if isinstance(m, nn.BatchNorm2d))
    head = 2048 * 3 + 3
    official = apply_method(copy.deepcopy(base), "ssf")
    assert isinstance(official.fc, SSFHeadInput) and isinstance(official.conv1, SSF) and isinstance(official.bn1, SSF)
    assert count_params(official)[0] == 2 * n_conv + 2 * n_bn + 2 * 2048 + head == 116_483
    norm = apply_method(copy.deepcopy(base), "ssf", sites="norm")
    assert isinstance(norm.conv1, nn.Conv2d) and isinstance(norm.fc, nn.Linear)
    assert count_params(norm)[0] == 2 * n_bn + head == 59_267
    with pytest.raises(ValueError, match="sites"):
        apply_method(copy.deepcopy(base), "ssf", sites="everywhere")


@pytest.mark.parametrize("name,size", [(TINY_CNN, 32), ("mobilenetv3_small_050", 64), ("convnext_atto", 64)])
def test_ssf_official_merge_is_exact(name, size):
    torch.manual_seed(0)
    base = create_backbone(name, 3, pretrained=False).eval()
    model = apply_method(copy.deepcopy(base), "ssf")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        x = torch.randn(2, 3, size, size, generator=g)
        expected = model(x)
        merged = merge_method(model)
        got = merged(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * max(1.0, expected.abs().max().item()))
    names = [type(m).__name__.replace("FrozenStats", "") for m in merged.modules()]
    assert names == [type(m).__name__ for m in base.modules()]


def test_ssf_after_a_biasless_conv_without_batchnorm_is_not_mergeable():
    from timm.models.densenet import DenseNet

    torch.manual_seed(0)
    base = DenseNet(growth_rate=4, block_config=(1, 1), bn_size=2, num_classes=3).eval()
    model = apply_method(copy.deepcopy(base), "ssf")
    with pytest.raises(NotMergeable, match="conv2"):  # DenseNet's conv2 feeds a concatenation
        merge_method(model)
    assert merge_method(apply_method(copy.deepcopy(base), "ssf", sites="norm")) is not None
