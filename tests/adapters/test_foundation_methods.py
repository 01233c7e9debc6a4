"""Catalogue methods on converted foundation models: identity at init where the method is, trained,
saved with save_adapter and reloaded with load_adapter from the local repo copy, exactly."""
from __future__ import annotations

import pytest
import torch

from adapters import apply_method, create_backbone
from adapters.io import AdapterConfig, load_adapter, save_adapter
from tests.helpers import foundation_repos as R


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPEFT_CACHE", str(tmp_path / "medpeft-cache"))


def _swiglu_registers():
    from timm.layers import SwiGLUPacked

    return dict(init_values=1e-5, reg_tokens=4, mlp_ratio=5.3375, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU,
                dynamic_img_size=True, patch_size=16, embed_dim=32, depth=2, num_heads=2)


BASES = {  # case -> (preset, builder, kwargs, input size)
    "rad-dino": ("rad-dino", R.dinov2_repo, {"swiglu": True}, 28),  # LayerScale + SwiGLU
    "dinov2-reg-base": ("dinov2-reg-base", R.dinov2_repo, {"registers": 4}, 28),  # LayerScale + registers
    "medsiglip": ("medsiglip", R.siglip_repo, {}, 32),  # no class token, attention-pool head
    "biomedclip": ("biomedclip", R.open_clip_repo, {"timm_model": "test_vit"}, 160),  # timm tower + projection
    "clip-native": ("biomedclip", R.open_clip_repo, {"timm_model": None}, 32),  # open_clip's own ViT
    "virchow2": ("virchow2", R.timm_repo, {"pooling": "cls_avg", **_swiglu_registers()}, 64),  # timm, CLS ++ mean
}
FAST = {"rad-dino", "virchow2"}  # the others run in the full suite (pytest -m slow)


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """Each tiny repo built once, when a test first needs it."""
    made: dict = {}

    def get(case):
        if case not in made:
            preset, builder, kwargs, size = BASES[case]
            folder, _ = builder(tmp_path_factory.mktemp(case) / "repo", **kwargs)
            made[case] = (preset, folder, size)
        return made[case]

    return get


CASES = [pytest.param(base, method, marks=[] if base in FAST else [pytest.mark.slow])
         for base in BASES for method in ("lora", "ssf", "adaptformer")]
CASES += [pytest.param("dinov2-reg-base", "vpt_shallow"), pytest.param("dinov2-reg-base", "vpt_deep"),
          pytest.param("virchow2", "vpt_deep")]  # registers + dynamic_img_size (timm's authors' args)


@pytest.mark.parametrize("base,method", CASES)
def test_method_trains_and_reloads_exactly(repos, tmp_path, base, method):
    base, folder, size = repos(base)
    torch.manual_seed(0)
    model = create_backbone(base, 3, init_checkpoint=str(folder)).eval()
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        before = model(x)
    model = apply_method(model, method)
    if method in ("lora", "ssf", "adaptformer"):  # identity at init: LayerScale, registers, pooling respected
        with torch.no_grad():
            assert torch.allclose(model.eval()(x), before, atol=1e-5)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    with torch.no_grad():
        trained = model(x)
    assert not torch.allclose(trained, before, atol=1e-4)
    cfg = AdapterConfig(method=method, backbone=base, num_classes=3, init_checkpoint=str(folder))
    save_adapter(model, tmp_path / "adapter", cfg)
    loaded, lcfg = load_adapter(tmp_path / "adapter")
    assert lcfg.backbone == base
    with torch.no_grad():
        assert torch.allclose(loaded(x), trained, atol=1e-6)


def _vit_methods():
    from adapters import methods_for

    return sorted(m.name for m in methods_for("vit"))


@pytest.fixture(scope="module")
def registers_swiglu(tmp_path_factory):
    folder, _ = R.dinov2_repo(tmp_path_factory.mktemp("regs") / "repo", registers=4, swiglu=True)
    return folder


@pytest.fixture(scope="module")
def registers_plain(tmp_path_factory):
    folder, _ = R.dinov2_repo(tmp_path_factory.mktemp("regs-mlp") / "repo", registers=4)
    return folder


# FacT factorises fc1/fc2 with the MLP width a multiple of dim: it refuses SwiGLU (a clear MethodError,
# asserted) and is checked on registers + LayerScale with a plain MLP instead.
MLP_ONLY = {"fact_tt", "fact_tk"}


@pytest.mark.parametrize("method", [pytest.param(m, marks=[] if m in ("lora", "vpt_deep", "ssf") else
                                                 [pytest.mark.slow]) for m in _vit_methods()])
def test_every_vit_method_applies_to_a_registers_swiglu_model(registers_swiglu, registers_plain, tmp_path, method):
    """Registers, LayerScale and SwiGLU together: every ViT method of the catalogue trains and reloads."""
    from adapters import merge_method
    from adapters.core import MethodError, NotMergeable

    torch.manual_seed(0)
    if method in MLP_ONLY:
        with pytest.raises(MethodError, match="MLP width"):
            apply_method(create_backbone("dinov2-reg-base", 2, init_checkpoint=str(registers_swiglu)), method)
        registers_swiglu = registers_plain
    model = apply_method(create_backbone("dinov2-reg-base", 2, init_checkpoint=str(registers_swiglu)), method)
    x = torch.randn(2, 3, 28, 28)
    loss = model.train()(x).logsumexp(-1).sum()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
        out = model.eval()(x)
    save_adapter(model, tmp_path / "a", AdapterConfig(method=method, backbone="dinov2-reg-base", num_classes=2,
                                                      init_checkpoint=str(registers_swiglu)))
    loaded, _ = load_adapter(tmp_path / "a")
    with torch.no_grad():
        assert torch.allclose(loaded(x), out, atol=1e-6)
        try:
            merged = merge_method(loaded)
        except NotMergeable:
            return
        assert torch.allclose(merged.eval()(x), out, atol=1e-5)
