"""The invariant table, part 2 (part 1: test_adapters.py), through the public API only (create_backbone,
apply_method, save_adapter, load_adapter, merge_method), for every registered method:

- every trainable tensor gets a gradient and changes within a few optimizer steps;
- methods documented as *not* the base model at init really differ from it;
- the U-Net family: identity at init, only the method's tensors change, save -> load, exact merge;
- hand-written ViT methods on a ViT with register tokens and LayerScale (what foundation models become);
- AdaLoRA's rank allocation inside the training step, saved and reloaded at the pruned ranks;
- trainable counts on ViT-B/16 against the papers' own figures (slow).
"""
from __future__ import annotations

import copy

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from adapters import METHODS, MethodError, NotMergeable, apply_method, create_backbone, merge_method
from adapters.backbones import TINY_CNN, TINY_VIT
from adapters.io import AdapterConfig, load_adapter, save_adapter
from adapters.registry import after_step, extra_loss

BACKBONES = {"vit": TINY_VIT, "cnn": TINY_CNN}
# The fast subset runs a representative method of each mechanism; the rest run with the slow tests.
FAST = {"lora", "loha", "oft", "vera", "fourierft", "adalora", "fact_tk", "repadapter", "mona", "prefix_tuning", "conv_adapter", "convpass", "ssf", "bitfit"}
CASES = [pytest.param(n, f, id=f"{n}-{f}", marks=() if n in FAST else pytest.mark.slow)
         for n, m in sorted(METHODS.items()) for f in m.families if f in BACKBONES]


def base_model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone(BACKBONES[family], 3, pretrained=False).eval()


def images(seed: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def step(model, x, y, opt):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    reg = extra_loss(model)
    (loss if reg is None else loss + reg).backward()
    opt.step()
    after_step(model)


def train(model, steps: int = 3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model.train()
    for i in range(steps):
        step(model, images(i), torch.tensor([0, 1, 2, 1]), opt)
    model.eval()
    return model


@pytest.mark.parametrize("name,family", CASES)
def test_every_trainable_tensor_gets_a_gradient_and_changes(name, family):
    model = apply_method(base_model(family), name)
    init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train(model, steps=3)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert not [n for n, g in grads.items() if g is None], f"{name}: tensors without a gradient"
    same = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, init[n])]
    assert not same, f"{name}: trainable tensors that did not change: {same[:4]}"


@pytest.mark.parametrize("name,family", [c for c in CASES if not METHODS[c.values[0]].identity_at_init
                                         and c.values[0] not in ("full", "linear_probe")])
def test_methods_documented_as_not_identity_change_the_output(name, family):
    base = base_model(family)
    model = apply_method(copy.deepcopy(base), name)
    with torch.no_grad():
        assert not torch.allclose(model(images(9)), base(images(9)), atol=1e-6)


def test_peft_rejection_names_methods_that_fit():
    with pytest.raises(MethodError, match="methods for cnn: .*lora"):
        apply_method(base_model("cnn"), "vera")
    with pytest.raises(MethodError, match="not a cnn target rule"):
        apply_method(base_model("cnn"), "loha", targets="qv")
    with pytest.raises(MethodError, match="methods that fit: .*lora"):  # OFT/BOFT: no conv its blocks divide
        apply_method(base_model("cnn"), "boft", boft_block_size=5)


# --- ViT with register tokens and LayerScale (how foundation models arrive as timm ViTs) -------------------

HAND_WRITTEN_VIT = ["adapter_houlsby", "adapter_pfeiffer", "convpass", "fact_tt", "fact_tk", "repadapter", "mona",
                    "prefix_tuning", "vpt_shallow", "vpt_deep", "adaptformer", "ssf"]


def reg_vit() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0,
                              reg_tokens=3, init_values=0.1, num_classes=3, global_pool="avg")
    with torch.no_grad():  # LayerScale that matters
        for b in model.blocks:
            b.ls1.gamma.uniform_(0.5, 1.5)
            b.ls2.gamma.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
                                  for n in HAND_WRITTEN_VIT])
def test_register_tokens_and_layerscale(name, tmp_path):
    base = reg_vit()
    assert base.num_prefix_tokens == 4
    model = apply_method(copy.deepcopy(base), name)
    x = images(5)
    with torch.no_grad():
        if METHODS[name].identity_at_init:
            torch.testing.assert_close(model(x), base(x), rtol=0, atol=1e-5)
    train(model)
    gammas = {n: p for n, p in model.named_parameters() if n.endswith("gamma") and ".ls" in n}
    assert gammas and not any(p.requires_grad for p in gammas.values())
    with torch.no_grad():
        y = model(x)
    loaded = apply_method(copy.deepcopy(base), name)
    loaded.load_state_dict({n: p for n, p in model.state_dict().items()}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), y, rtol=0, atol=0)
    if METHODS[name].merge is not None:
        with torch.no_grad():
            torch.testing.assert_close(merge_method(model)(x), y, rtol=1e-5, atol=1e-5)


# --- AdaLoRA's budget inside the training step ---------------------------------------------------------------

def test_adalora_allocates_ranks_in_the_step_and_reloads(tmp_path):
    base = base_model("vit")
    model = apply_method(copy.deepcopy(base), "adalora", total_step=6, tinit=1, tfinal=2, deltaT=1, init_r=6,
                         target_r=2)
    train(model, steps=6)
    pattern = model.medpeft_hparams["rank_pattern"]
    assert pattern and sum(sum(v) for v in pattern.values()) < 6 * len(pattern)  # ranks were pruned
    save_adapter(model, tmp_path, AdapterConfig(method="adalora", backbone=TINY_VIT, num_classes=3))
    loaded, cfg = load_adapter(tmp_path, model=copy.deepcopy(base))
    assert cfg.hparams["rank_pattern"] == pattern
    with torch.no_grad():
        torch.testing.assert_close(loaded(images(7)), model(images(7)), rtol=1e-6, atol=1e-6)


# --- U-Net ----------------------------------------------------------------------------------------------------

UNET_CASES = sorted(n for n, m in METHODS.items() if "unet" in m.families)


@pytest.fixture(scope="module")
def unet():
    from adapters.methods.unet import build_unet

    return build_unet("tiny").eval()


def unet_out(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, c = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 5, 32, generator=g)
    return model(x, torch.tensor([10, 500]), encoder_hidden_states=c).sample


@pytest.mark.slow
@pytest.mark.parametrize("name", UNET_CASES)
def test_unet_invariants(name, unet, tmp_path):
    model = apply_method(copy.deepcopy(unet), name)
    method = METHODS[name]
    with torch.no_grad():
        if method.identity_at_init:
            torch.testing.assert_close(unet_out(model), unet_out(unet), rtol=0, atol=1e-6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for i in range(2):
        opt.zero_grad()
        unet_out(model, i).pow(2).mean().backward()
        opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= trainable, sorted(changed - trainable)[:4]
    with torch.no_grad():
        y = unet_out(model, 3)
    save_adapter(model, tmp_path, AdapterConfig(method=name, backbone="tiny", num_classes=0, task="generation"))
    loaded, _ = load_adapter(tmp_path, model=copy.deepcopy(unet))
    with torch.no_grad():
        torch.testing.assert_close(unet_out(loaded, 3), y, rtol=0, atol=0)
        if method.merge is None:
            with pytest.raises(NotMergeable):
                merge_method(model)
        else:
            torch.testing.assert_close(unet_out(merge_method(model), 3), y, rtol=1e-5, atol=1e-5)


# --- ViT-B/16 trainable counts vs the papers (docs/paper_vs_here.md, column "paper ViT-B/16") ---------------

PAPER_VIT_B16 = {  # method: (the paper's trainable count without the head, relative tolerance, source)
    "lora": (294_912, 0.0, "LoRA r=8 on W_q, W_v: 0.29M (VTAB tables, e.g. NOAH/FacT)"),
    "vera": (24_576, 0.0, "VeRA paper Table (ViT-Base, r=256 on q, v): 24.6K"),
    "adaptformer": (1_189_632, 0.01, "AdaptFormer paper: 1.2M (bottleneck 64)"),
    "convpass": (327_552, 0.02, "Convpass paper: 0.33M"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER_VIT_B16))
def test_trainable_count_matches_the_paper_on_vit_b16(name):
    from adapters import count_params

    model = create_backbone("vit_base_patch16_224", 0, pretrained=False)
    model = apply_method(model, name)
    expected, tol, _ = PAPER_VIT_B16[name]
    got = count_params(model)[0]
    assert abs(got - expected) <= tol * expected, (got, expected)
