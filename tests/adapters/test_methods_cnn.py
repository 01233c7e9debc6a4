"""SSF and TSA beyond the generic invariants (merge exactness on real timm layer types, geometry
rules, near-identity init) and the ``python -m adapters list`` command. CPU, a few seconds each."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from adapters import OFFLINE_LITE0, MethodError, NotMergeable, apply_method, create_backbone, merge_method
from adapters.__main__ import human, main
from adapters.backbones import TINY_CNN, TINY_VIT
from adapters.methods.ssf import SSF
from adapters.methods.tsa import TSAConv, tsa_targets

ROOT = Path(__file__).resolve().parents[2]


def base_model(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return create_backbone(name, 3, pretrained=False, **kwargs).eval()


def images(size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def perturb_trainable(model: nn.Module, std: float = 0.1, seed: int = 5) -> nn.Module:
    """As if trained: every trainable tensor moved away from its init."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def type_names(model: nn.Module) -> list[str]:
    return [type(m).__name__.replace("FrozenStats", "") for m in model.modules()]


def assert_merge_exact(base: nn.Module, model: nn.Module, x: torch.Tensor, tol: float = 1e-5) -> nn.Module:
    with torch.no_grad():
        expected = model(x)
        merged = merge_method(model)
        got = merged(x)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * max(1.0, expected.abs().max().item()))
    assert type_names(merged) == type_names(base)
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in base.parameters())
    return merged


# --- SSF ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone,size", [(TINY_VIT, 32), (TINY_CNN, 32), (OFFLINE_LITE0, 64)])
def test_ssf_merge_is_exact(backbone, size):
    base = base_model(backbone)
    model = perturb_trainable(apply_method(copy.deepcopy(base), "ssf"))
    x = images(size)
    with torch.no_grad():
        assert not torch.allclose(model(x), base(x), atol=1e-3), "perturbed SSF must change the logits"
    assert_merge_exact(base, model, x)


def test_ssf_vit_targets():
    model = apply_method(base_model(TINY_VIT), "ssf")
    wrapped = {n for n, m in model.named_modules() if isinstance(m, SSF)}
    assert {"patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2",
            "blocks.0.norm1", "blocks.0.norm2", "norm"} <= wrapped
    assert "head" not in wrapped and not any(n.startswith("head.") for n in wrapped)


def test_ssf_sits_between_batchnorm_and_its_fused_activation():
    model = apply_method(base_model(OFFLINE_LITE0), "ssf")
    wrapper = model.bn1
    assert isinstance(wrapper, SSF) and isinstance(wrapper.act, nn.ReLU6)
    assert isinstance(wrapper.inner.act, nn.Identity)
    with torch.no_grad():
        wrapper.ssf_scale.fill_(2.0)
        wrapper.ssf_shift.fill_(-0.5)
        x = torch.randn(2, 32, 8, 8)
        bn = nn.BatchNorm2d.forward(wrapper.inner, x)
        torch.testing.assert_close(wrapper(x), torch.clamp(bn * 2.0 - 0.5, 0, 6))


def test_ssf_paper_init_is_not_identity():
    model = apply_method(base_model(TINY_CNN), "ssf", init_std=0.02)
    scales = torch.cat([m.ssf_scale.detach() for m in model.modules() if isinstance(m, SSF)])
    assert 0.0 < scales.std() < 0.05 and abs(scales.mean().item() - 1.0) < 0.01


def test_ssf_after_a_biasless_linear_is_not_mergeable():
    model = perturb_trainable(apply_method(base_model(TINY_VIT, qkv_bias=False), "ssf"))
    with pytest.raises(NotMergeable, match="qkv"):
        merge_method(model)
    assert any(isinstance(m, SSF) for m in model.modules()), "a refused merge leaves the model as it was"


# --- TSA ----------------------------------------------------------------------------------------

def conv_stack() -> nn.Module:
    """A 'cnn' of convs with every geometry TSA must merge exactly."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 7, stride=2, padding=3),  # stem: not adapted
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2),
        nn.Conv2d(16, 16, 5, padding=2, groups=4),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise
        nn.Conv2d(16, 16, 3, padding="same"),
        nn.Conv2d(16, 32, 1, stride=2),
    ).eval()


@pytest.mark.parametrize("targets", ["main", "spatial", "all"])
def test_tsa_merge_is_exact(targets):
    base = base_model(TINY_CNN)
    model = perturb_trainable(apply_method(copy.deepcopy(base), "tsa", targets=targets))
    assert_merge_exact(base, model, images())


def test_tsa_merge_is_exact_for_every_geometry():
    base = conv_stack()
    model = perturb_trainable(apply_method(copy.deepcopy(base), "tsa", targets="all"))
    assert sum(isinstance(m, TSAConv) for m in model.modules()) == 6
    assert_merge_exact(base, model, images(31))  # odd size: strided grids must still line up


def test_tsa_refuses_convs_whose_grid_differs():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=0))
    with pytest.raises(MethodError, match="'same' padding: 1"):
        apply_method(model, "tsa")


def test_tsa_names_the_unmergeable_layer():
    base = base_model(OFFLINE_LITE0)
    model = perturb_trainable(apply_method(copy.deepcopy(base), "tsa"))
    with torch.no_grad():
        model(images(64))  # the forward works on timm's dynamic-padding convs
    with pytest.raises(NotMergeable, match=r"blocks\.1\.0\.conv_dw.*Conv2dSame"):
        merge_method(model)


@pytest.mark.parametrize("backbone,size,targets", [(TINY_CNN, 32, "all"), (OFFLINE_LITE0, 64, "main")])
def test_tsa_is_near_identity_at_init(backbone, size, targets):
    base = base_model(backbone)
    model = apply_method(copy.deepcopy(base), "tsa", targets=targets)
    x = images(size)
    with torch.no_grad():
        y, y0 = model(x), base(x)
    rel = ((y - y0).norm() / y0.norm()).item()
    assert 0 < rel < 1e-2
    exact = apply_method(copy.deepcopy(base), "tsa", targets=targets, init_scale=0.0)
    with torch.no_grad():
        torch.testing.assert_close(exact(x), y0, rtol=0, atol=1e-6)


def test_tsa_alpha_init_is_scaled_identity():
    model = apply_method(base_model(TINY_CNN), "tsa")
    alpha = model.layer2[0].conv2.tsa_alpha.detach()[:, :, 0, 0]
    torch.testing.assert_close(alpha, torch.eye(16) * 1e-4)


def test_tsa_rejects_unknown_targets():
    with pytest.raises(MethodError, match="targets"):
        apply_method(base_model(TINY_CNN), "tsa", targets="everything")


def test_tsa_resnet50_target_counts():
    model = create_backbone("resnet50", 3, pretrained=False)
    counts = {t: sum(model.get_submodule(n).weight.shape[0] * model.get_submodule(n).weight.shape[1]
                     for n in tsa_targets(model, t)) for t in ("main", "spatial", "all")}
    assert counts == {"main": 10_616_832, "spatial": 1_257_472, "all": 13_385_728}


# --- python -m adapters list --------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet50_rows(tmp_path_factory):
    csv = tmp_path_factory.mktemp("ref") / "reported.csv"
    csv.write_text("table,task,backbone,method,dataset,n_train,metric,mean,spread,trainable_params_reported\n"
                   "2,classification,resnet50,ssf,a,1,f1,0.5,0.1,60.6K\n"
                   "2,classification,resnet50,ssf,b,1,f1,0.5,0.1,60.6K\n"
                   "2,classification,vit_base,ssf,a,1,f1,0.5,0.1,0.2M\n"
                   "2,classification,resnet50,full,a,1,f1,0.5,0.1,\n")
    from io import StringIO
    from contextlib import redirect_stdout

    out = StringIO()
    with redirect_stdout(out):
        rc = main(["list", "--backbone", "resnet50", "--num-classes", "3", "--json", "--reference", str(csv)])
    assert rc == 0
    return json.loads(out.getvalue())


@pytest.mark.slow
def test_list_resnet50_counts(resnet50_rows):
    rows = {r["method"]: r for r in resnet50_rows}
    # ssf: the official placement (after every conv and BN, and on the pooled features); sites="norm": 59,267
    expected = {"bias": 32_707, "batchnorm": 59_267, "full": 23_514_179, "linear_probe": 6_147,
                "ssf": 116_483, "tsa": 10_622_979, "lora": 309_915}
    assert {m: rows[m]["trainable"] for m in expected} == expected
    assert rows["full"]["total"] == 23_514_179 and rows["full"]["percent"] == 100.0
    assert rows["ssf"]["mergeable"] is True and rows["tsa"]["mergeable"] is True


@pytest.mark.slow  # shares the ResNet50 count fixture (~14 s)
def test_list_json_is_well_formed(resnet50_rows):
    keys = {"method", "trainable", "total", "percent", "mergeable", "peft", "identity_at_init", "paper_name",
            "reported"}
    assert resnet50_rows and all(keys <= set(r) for r in resnet50_rows)
    rows = {r["method"]: r for r in resnet50_rows}
    assert rows["ssf"]["reported"] == "60.6K"  # resnet50 rows only, duplicates collapsed
    assert rows["full"]["reported"] is None and rows["tsa"]["reported"] is None
    assert "attention" not in rows  # ViT-only methods are not listed for a CNN


def test_list_table_and_all_methods(capsys):
    assert main(["list", "--backbone", TINY_CNN, "--num-classes", "3", "--reference", "/nonexistent.csv"]) == 0
    table = capsys.readouterr().out
    assert "ssf" in table and "tsa" in table and "trainable" in table
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert any(line.startswith("tsa") and "cnn" in line for line in listing.splitlines())
    assert human(59_267) == "59.3K" and human(23_514_179) == "23.5M" and human(512) == "512"


@pytest.mark.slow
def test_list_bad_backbone_exits_2():
    proc = subprocess.run([sys.executable, "-m", "adapters", "list", "--backbone", "no_such_net", "--num-classes",
                           "3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown backbone 'no_such_net'" in proc.stderr


def test_list_needs_num_classes_with_a_backbone(capsys):
    assert main(["list", "--backbone", TINY_CNN]) == 2
    assert "--num-classes" in capsys.readouterr().err


@pytest.mark.slow
def test_list_unet(capsys):
    assert main(["list", "--unet", "tiny", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"bias", "norm", "bias_norm", "bias_norm_attention", "lora", "svdiff"} <= set(rows)
    assert rows["bias_norm"]["trainable"] > rows["bias"]["trainable"]
    assert rows["bias"]["reported"] == "343K"  # the paper's Table 4 count, read from the reference CSV
    assert main(["list", "--unet", "/no/such/unet"]) == 2
    assert "no such folder" in capsys.readouterr().err
