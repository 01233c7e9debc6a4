"""Method-specific checks for the ViT methods (LoRA q/v split, LayerNorm tuning, AdaptFormer, VPT),
on the tiny ViT, plus trainable-parameter counts on the ViT-B/16 architecture (random weights)."""
from __future__ import annotations

import copy
import json

import pytest
import timm
import torch
from torch import nn

from adapters import apply_method, create_backbone, merge_method
from adapters.methods.adaptformer import AdaptMLP
from adapters.backbones import TINY_VIT
from adapters.io import AdapterConfig, save_adapter
from adapters.methods.layernorm import layernorm_names
from adapters.methods.lora import SplitQKV, fuse_qkv, split_qkv
from adapters.methods.vpt import DeepPromptBlock, PromptedNormPre

NUM_CLASSES = 3
DIM, DEPTH, NUM_PATCHES = 32, 2, 16  # the tiny ViT: 32x32 inputs, 8x8 patches


def tiny_vit(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return create_backbone(TINY_VIT, NUM_CLASSES, pretrained=False, **kwargs).eval()


def images(seed: int = 1, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(images(99))


def train_steps(model: nn.Module, steps: int = 3, lr: float = 1e-2) -> nn.Module:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for i in range(steps):
        loss = nn.functional.cross_entropy(model(images(i)), torch.tensor([0, 1, 2, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def trainable(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- LoRA: fused qkv vs q/v split ------------------------------------------------------------

def test_split_qkv_is_the_fused_layer():
    base = tiny_vit()
    split = split_qkv(copy.deepcopy(base))
    attn = split.blocks[0].attn
    assert isinstance(attn.qkv, SplitQKV) and all(type(getattr(attn.qkv, c)) is nn.Linear for c in "qkv")
    x = torch.randn(2, 5, DIM)
    torch.testing.assert_close(attn.qkv(x), base.blocks[0].attn.qkv(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(split), logits(base), rtol=0, atol=1e-6)
    fused = fuse_qkv(split)
    assert type(fused.blocks[0].attn.qkv) is nn.Linear
    for k, v in base.state_dict().items():
        assert torch.equal(fused.state_dict()[k], v), k


def test_lora_qv_trains_only_q_and_v():
    model = apply_method(tiny_vit(), "lora", targets="qv")
    names = trainable(model)
    lora = [n for n in names if ".lora_" in n]
    assert lora and all(".attn.qkv.q.lora_" in n or ".attn.qkv.v.lora_" in n for n in lora), lora
    assert len(lora) == DEPTH * 2 * 2  # blocks x (q, v) x (A, B)
    assert not any(".qkv.k." in n for n in names)
    for block in model.base_model.model.blocks:
        assert type(block.attn.qkv.k) is nn.Linear  # k untouched: no LoRA layer at all
    k_before = model.base_model.model.blocks[0].attn.qkv.k.weight.clone()
    train_steps(model)
    assert torch.equal(model.base_model.model.blocks[0].attn.qkv.k.weight, k_before)


def test_lora_qv_merges_back_to_plain_qkv():
    base = tiny_vit()
    model = train_steps(apply_method(copy.deepcopy(base), "lora", targets="qv"))
    expected = logits(model)
    assert not torch.allclose(expected, logits(base), atol=1e-4)  # LoRA did learn
    merged = merge_method(model)
    assert all(type(b.attn.qkv) is nn.Linear for b in merged.blocks)
    assert [type(m) for m in merged.modules()] == [type(m) for m in base.modules()]
    assert merged.state_dict().keys() == base.state_dict().keys()
    torch.testing.assert_close(logits(merged), expected, rtol=1e-5, atol=1e-5)


def test_lora_qv_folder_loads_on_a_split_base(tmp_path):
    from peft import PeftModel

    model = train_steps(apply_method(tiny_vit(), "lora", targets="qv"))
    save_adapter(model, tmp_path, AdapterConfig(method="lora", backbone=TINY_VIT, num_classes=NUM_CLASSES))
    plain = PeftModel.from_pretrained(split_qkv(tiny_vit()), str(tmp_path)).eval()
    torch.testing.assert_close(logits(plain), logits(model), rtol=0, atol=1e-6)


def test_lora_defaults_to_q_and_v_on_a_vit():
    model = apply_method(tiny_vit(), "lora")
    wrapped = [n for n, m in model.base_model.model.named_modules() if hasattr(m, "lora_A")]
    assert wrapped == [f"blocks.{i}.attn.qkv.{p}" for i in range(DEPTH) for p in ("q", "v")]
    assert model.medpeft_hparams["targets"] == "qv"  # recorded resolved (issue 20)


def test_lora_fused_qkv_folder_loads_with_plain_peft_on_a_timm_model(tmp_path):
    from peft import PeftModel

    model = train_steps(apply_method(tiny_vit(), "lora", targets="qkv"))
    save_adapter(model, tmp_path, AdapterConfig(method="lora", backbone=TINY_VIT, num_classes=NUM_CLASSES))
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 8 and cfg["modules_to_save"] == ["head"]
    torch.manual_seed(0)
    timm_model = timm.create_model(TINY_VIT, pretrained=False, num_classes=NUM_CLASSES).eval()
    plain = PeftModel.from_pretrained(timm_model, str(tmp_path)).eval()
    wrapped = [n for n, m in plain.base_model.model.named_modules() if hasattr(m, "lora_A")]
    assert wrapped == [f"blocks.{i}.attn.qkv" for i in range(DEPTH)]
    torch.testing.assert_close(logits(plain), logits(model), rtol=0, atol=1e-6)


def test_lora_rejects_unknown_targets():
    from adapters import MethodError

    with pytest.raises(MethodError, match="targets"):
        apply_method(tiny_vit(), "lora", targets="conv")


# --- LayerNorm tuning --------------------------------------------------------------------------

def test_layernorm_selects_exactly_the_real_layernorms():
    base = tiny_vit()
    expected = [f"blocks.{i}.{n}" for i in range(DEPTH) for n in ("norm1", "norm2")] + ["norm"]
    assert layernorm_names(base) == expected
    # timm's norm-named Identity placeholders exist and must not be selected
    placeholders = [n for n, m in base.named_modules() if "norm" in n and isinstance(m, nn.Identity)]
    assert {"norm_pre", "fc_norm", "blocks.0.attn.q_norm"} <= set(placeholders)
    model = apply_method(copy.deepcopy(base), "layernorm")
    inner = model.base_model.model
    tuned = [n for n, m in inner.named_modules() if type(m).__name__ == "LNTuningLayer"]
    assert tuned == expected
    assert all(isinstance(inner.get_submodule(n), nn.Identity) for n in placeholders)
    assert n_trainable(model) == len(expected) * 2 * DIM + DIM * NUM_CLASSES + NUM_CLASSES


# --- AdaptFormer -------------------------------------------------------------------------------

def test_adaptformer_is_identity_at_init_whatever_the_scale_then_learns():
    base = tiny_vit()
    ref = logits(base)
    for scale in (0.1, 10.0):
        model = apply_method(copy.deepcopy(base), "adaptformer", scale=scale)
        assert all(isinstance(b.mlp, AdaptMLP) for b in model.blocks)
        assert all(torch.count_nonzero(b.mlp.adapter.up.weight) == 0 for b in model.blocks)
        assert torch.count_nonzero(model.blocks[0].mlp.adapter.down.weight) > 0
        torch.testing.assert_close(logits(model), ref, rtol=0, atol=0)
    train_steps(model, steps=3)
    assert torch.count_nonzero(model.blocks[0].mlp.adapter.up.weight) > 0
    # the adapter branch itself now changes the output: switch it off and compare
    with_adapter = logits(model)
    for b in model.blocks:
        b.mlp.adapter_scale = 0.0
    assert not torch.allclose(logits(model), with_adapter, atol=1e-5)


def test_adaptformer_branch_reads_the_residual_stream_by_default():
    model = apply_method(tiny_vit(), "adaptformer")
    assert model.medpeft_hparams["dropout"] == 0.1 and model.medpeft_hparams["input"] == "residual"
    block = perturb_up(model).blocks[0]
    x = torch.randn(2, 1 + NUM_PATCHES, DIM, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        h = x + block.attn(block.norm1(x))
        adapter = block.mlp.adapter
        branch = 0.1 * adapter.up(torch.relu(adapter.down(h)))  # on x, not norm2(x); eval: no dropout
        expected = h + block.mlp.base(block.norm2(h)) + branch
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-6)
    assert isinstance(adapter.dropout, nn.Dropout) and adapter.dropout.p == 0.1


def test_adaptformer_norm_input_option():
    model = perturb_up(apply_method(tiny_vit(), "adaptformer", input="norm"))
    block = model.blocks[0]
    assert type(block).__name__ == "Block"  # forward untouched: the MLP wrapper sees norm2(x)
    h = torch.randn(2, 5, DIM)
    with torch.no_grad():
        adapter = block.mlp.adapter
        torch.testing.assert_close(block.mlp(h), block.mlp.base(h) + 0.1 * adapter.up(torch.relu(adapter.down(h))))
    from adapters import MethodError

    with pytest.raises(MethodError, match="input"):
        apply_method(tiny_vit(), "adaptformer", input="sideways")


def perturb_up(model: nn.Module) -> nn.Module:
    """As if trained: the zero-initialised up-projections get weights."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for b in model.blocks:
            b.mlp.adapter.up.weight.copy_(torch.randn(b.mlp.adapter.up.weight.shape, generator=g) * 0.1)
    return model.eval()


def test_adaptformer_learnable_scale():
    model = apply_method(tiny_vit(), "adaptformer", bottleneck=4, learnable_scale=True)
    names = trainable(model)
    assert f"blocks.{DEPTH - 1}.mlp.adapter_scale" in names
    assert n_trainable(model) == DEPTH * (DIM * 4 + 4 + 4 * DIM + DIM + 1) + DIM * NUM_CLASSES + NUM_CLASSES


# --- VPT ---------------------------------------------------------------------------------------

def _block_inputs(model: nn.Module) -> list[torch.Tensor]:
    seen = []
    hooks = [(b.block if isinstance(b, DeepPromptBlock) else b).register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach())) for b in model.blocks]
    logits(model)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("name", ["vpt_shallow", "vpt_deep"])
def test_vpt_adds_prompts_to_the_sequence(name):
    model = apply_method(tiny_vit(), name, num_prompts=5)
    assert isinstance(model.norm_pre, PromptedNormPre) and model.num_prefix_tokens == 1 + 5
    for x in _block_inputs(model):
        assert x.shape[1] == 1 + 5 + NUM_PATCHES
    assert all(".prompt" in n or n.startswith("head.") for n in trainable(model))


def test_vpt_deep_prompts_are_per_layer_and_replace_the_previous_ones():
    model = apply_method(tiny_vit(), "vpt_deep", num_prompts=5)
    prompts = [model.norm_pre.prompt] + [b.prompt for b in model.blocks[1:]]
    assert len(prompts) == DEPTH and len({id(p) for p in prompts}) == DEPTH
    assert not torch.equal(prompts[0], prompts[1])
    inputs = _block_inputs(model)
    for x, p in zip(inputs, prompts):  # each block reads its own layer's prompts at tokens 1..5
        torch.testing.assert_close(x[:, 1:6], p.detach().expand(x.shape[0], -1, -1), rtol=0, atol=0)
    assert not isinstance(model.blocks[0], DeepPromptBlock)
    assert sum(p.numel() for p in prompts) == DEPTH * 5 * DIM


@pytest.mark.parametrize("class_token", [True, False])
def test_vpt_avg_pooling_excludes_the_prompts(class_token):
    base = tiny_vit(global_pool="avg", class_token=class_token)
    model = apply_method(copy.deepcopy(base), "vpt_deep", num_prompts=4)
    prefix = int(class_token)
    assert model.num_prefix_tokens == prefix + 4
    with torch.no_grad():
        feats = model.forward_features(images())
        pooled = model.forward_head(feats, pre_logits=True)  # pool, then fc_norm (a LayerNorm for 'avg')
        expected = model.fc_norm(feats[:, prefix + 4:].mean(dim=1))
    assert feats.shape[1] == prefix + 4 + NUM_PATCHES
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-6)


def test_vpt_prompt_init_range():
    model = apply_method(tiny_vit(), "vpt_shallow")
    v = (6.0 / (3 * 8 * 8 + DIM)) ** 0.5
    p = model.norm_pre.prompt
    assert p.shape == (1, 10, DIM) and p.abs().max() <= v and p.abs().max() > v / 2


# --- ViT-B/16 trainable counts (architecture only, random weights) ------------------------------

@pytest.fixture(scope="module")
def vit_b():
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=NUM_CLASSES).eval()


@pytest.mark.slow
def test_vit_b16_trainable_counts(vit_b):
    head = 768 * NUM_CLASSES + NUM_CLASSES
    r, d, blocks = 8, 768, 12
    qkv = n_trainable(apply_method(copy.deepcopy(vit_b), "lora", targets="qkv"))
    qv = n_trainable(apply_method(copy.deepcopy(vit_b), "lora"))  # the default: W_q and W_v
    # fused qkv: A (r x d) + B (3d x r) = 4rd per block; q and v apart: 2 x (rd + dr) = 4rd as well.
    # (2/3 holds only against LoRA on separate q, k and v, 6rd.)
    assert qkv - head == blocks * 4 * r * d == 294_912
    assert qv - head == blocks * 4 * r * d
    adapt = n_trainable(apply_method(copy.deepcopy(vit_b), "adaptformer"))
    assert adapt == 12 * (768 * 64 + 64 + 64 * 768 + 768) + head
