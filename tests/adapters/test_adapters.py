"""Invariants every PEFT method must keep, parametrised over the registry and both classifier
families (tiny timm models, CPU). A method added to the registry is tested here automatically,
and must declare in EXPECTED_TRAINABLE which parameters it trains."""
from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapters import METHODS, MethodError, NotMergeable, apply_method, create_backbone, merge_method
from adapters.backbones import TINY_CNN, TINY_VIT
from adapters.core import BN_TYPES
from adapters.io import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, load_adapter, save_adapter
from adapters.methods.lora import SplitQKV, split_qkv

BACKBONES = {"vit": TINY_VIT, "cnn": TINY_CNN}
NUM_CLASSES = 3

# The test's own oracle: which parameter names each method may train (head always included).
HEAD = re.compile(r"(^|\.)(head|fc)\.")
EXPECTED_TRAINABLE = {
    "full": lambda n: True,
    "linear_probe": lambda n: False,
    "bitfit": lambda n: n.endswith(".bias"),
    "bias": lambda n: n.endswith(".bias"),
    "batchnorm": lambda n: re.search(r"(^|\.)bn\d\.(weight|bias)$", n) is not None
    or re.search(r"downsample\.1\.(weight|bias)$", n) is not None,
    "attention": lambda n: ".attn." in n,
    "lora": lambda n: ".lora_" in n,
    "dora": lambda n: ".lora_" in n,
    "layernorm": lambda n: "ln_tuning_layers" in n,
    "ssf": lambda n: n.endswith(("ssf_scale", "ssf_shift")),
    "tsa": lambda n: ".tsa." in n or n.endswith(".tsa_alpha") or ".tsa_" in n,
    "adaptformer": lambda n: ".adapter." in n or n.endswith("adapter_scale"),
    "vpt_shallow": lambda n: "prompt" in n,
    "vpt_deep": lambda n: "prompt" in n,
}
# peft's tuners: the tensor-name prefix each tuner layer gives its trainable tensors.
PEFT_PREFIX = {"loha": "hada_", "lokr": "lokr_", "ia3": "ia3_l", "oft": "oft_R", "boft": "boft_", "hra": "hra_u",
               "vera": "vera_lambda", "fourierft": "fourierft_spectrum", "vblora": "vblora_", "randlora": "randlora_",
               "shira": "shira_weight", "c3a": "c3a_kernel", "miss": "miss_", "delora": "delora_", "road": "road_",
               "hira": "hira_", "adalora": "lora_"}
EXPECTED_TRAINABLE.update({
    "adapter_houlsby": lambda n: re.search(r"\.(attn|mlp)\.branch\.(down|up)\.", n) is not None,
    "adapter_pfeiffer": lambda n: re.search(r"\.mlp\.branch\.(down|up)\.", n) is not None,
    "convpass": lambda n: re.search(r"\.(attn|mlp)\.branch\.(down|up|conv)\.", n) is not None,
    "fact_tt": lambda n: n.startswith("fact."),
    "fact_tk": lambda n: n.startswith("fact."),
    "repadapter": lambda n: re.search(r"\.(qkv|fc1)\.adapter\.conv_[AB]\.", n) is not None,
    "mona": lambda n: re.search(r"\.mona[12]\.", n) is not None,
    "prefix_tuning": lambda n: n.endswith(("attn.prefix_k", "attn.prefix_v")),
    "conv_adapter": lambda n: ".conv_adapter." in n,
})
EXPECTED_TRAINABLE.update({k: (lambda prefix: lambda n: f".{prefix}" in n)(v) for k, v in PEFT_PREFIX.items()})

# Issue 20's catalogue: a representative of each mechanism in the fast subset, the rest with the slow tests.
CATALOGUE_FAST = {"loha", "oft", "vera", "fourierft", "adalora", "fact_tk", "repadapter", "mona", "prefix_tuning",
                  "conv_adapter", "convpass", "adapter_houlsby"}
CATALOGUE = set(PEFT_PREFIX) | {"adapter_houlsby", "adapter_pfeiffer", "convpass", "fact_tt", "fact_tk", "repadapter",
                                "mona", "prefix_tuning", "conv_adapter"}
CASES = [pytest.param(name, fam, id=f"{name}-{fam}",
                      marks=pytest.mark.slow if name in CATALOGUE - CATALOGUE_FAST else ())
         for name, m in sorted(METHODS.items()) for fam in m.families if fam in BACKBONES]


def base_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_backbone(BACKBONES[family], NUM_CLASSES, pretrained=False).eval()


def adapted(name: str, family: str, seed: int = 0):
    base = base_model(family, seed)
    model = apply_method(copy.deepcopy(base), name)
    return base, model


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 1])


def train_steps(model, steps: int = 3, lr: float = 1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for i in range(steps):
        x, y = batch(i)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


def logits(model, seed: int = 99):
    with torch.no_grad():
        return model(batch(seed)[0])


def test_every_method_has_an_oracle():
    assert set(METHODS) - {m for m in METHODS if "unet" in METHODS[m].families and
                           not {"vit", "cnn"} & set(METHODS[m].families)} <= set(EXPECTED_TRAINABLE)


@pytest.mark.parametrize("name,family", CASES)
def test_exactly_intended_parameters_train(name, family):
    _, model = adapted(name, family)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    expect = EXPECTED_TRAINABLE[name]
    wrong = [n for n in trainable if not (expect(n) or HEAD.search(n))]
    assert not wrong, f"{name} trains parameters it should not: {wrong[:5]}"
    missed = [n for n in frozen if expect(n) and not ("base_layer" in n and name == "layernorm")]
    assert not missed, f"{name} leaves frozen parameters it should train: {missed[:5]}"
    assert any(HEAD.search(n) for n in trainable), "the classifier head must be trainable"
    if name != "full":
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        assert n_train < n_all


@pytest.mark.parametrize("name,family", CASES)
def test_only_trainable_tensors_change_after_a_step(name, family):
    _, model = adapted(name, family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # (remove_duplicate=False: a tensor shared by several modules, e.g. VB-LoRA's vector bank, under every name)
    trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    saved_buffers = set(METHODS[name].saved_buffers(model)) if METHODS[name].saved_buffers else set()
    train_steps(model, steps=2)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    unexpected = changed - trainable - saved_buffers
    assert not unexpected, f"{name} changed frozen tensors: {sorted(unexpected)[:5]}"
    assert any(HEAD.search(k) for k in changed), "the head did not learn"
    if name not in ("linear_probe",):
        assert any(not HEAD.search(k) for k in changed & trainable), f"{name}: only the head changed"


@pytest.mark.parametrize("name,family", [c for c in CASES if METHODS[c.values[0]].identity_at_init])
def test_identity_at_init(name, family):
    base, model = adapted(name, family)
    torch.testing.assert_close(logits(model), logits(base), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,family", CASES)
def test_save_then_load_gives_identical_logits(name, family, tmp_path):
    _, model = adapted(name, family)
    train_steps(model)
    cfg = AdapterConfig(method=name, backbone=BACKBONES[family], num_classes=NUM_CLASSES,
                        class_names=["a", "b", "c"])
    save_adapter(model, tmp_path, cfg)
    assert (tmp_path / WEIGHTS_NAME).is_file() and (tmp_path / CONFIG_NAME).is_file()
    assert (tmp_path / "README.md").read_text().startswith("---")
    # Only the trainable tensors are stored (plus trained BN statistics, and the frozen random tensors a
    # peft tuner needs to be rebuilt: VeRA's/RandLoRA's projections, SHiRA's indices; never base weights).
    stored = load_file(str(tmp_path / WEIGHTS_NAME))
    n_stored = sum(v.numel() for k, v in stored.items() if "running_" not in k and "num_batches" not in k)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_stored == n_train or (METHODS[name].peft and n_stored > n_train)
    assert not any("base_layer" in k for k in stored)
    loaded, loaded_cfg = load_adapter(tmp_path, model=base_model(family))
    assert loaded_cfg.class_names == ["a", "b", "c"]
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)


@pytest.mark.parametrize("name,family", CASES)
def test_merge_gives_unmerged_logits(name, family):
    base, model = adapted(name, family)
    train_steps(model)
    expected = logits(model)
    if METHODS[name].merge is None:
        with pytest.raises(NotMergeable):
            merge_method(model)
        return
    merged = merge_method(model)
    torch.testing.assert_close(logits(merged), expected, rtol=1e-5, atol=1e-5)
    # No extra modules or parameters remain: the merged model is the base architecture.
    assert [type(m).__name__.replace("FrozenStats", "") for m in merged.modules()] == \
           [type(m).__name__.replace("FrozenStats", "") for m in base.modules()]
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in base.parameters())


@pytest.mark.parametrize("name,family", [c for c in CASES if METHODS[c.values[0]].peft])
def test_peft_folder_loads_with_plain_peft(name, family, tmp_path):
    from peft import PeftModel

    _, model = adapted(name, family)
    train_steps(model)
    save_adapter(model, tmp_path, AdapterConfig(method=name, backbone=BACKBONES[family], num_classes=NUM_CLASSES))
    assert (tmp_path / "adapter_config.json").is_file()
    base = base_model(family)
    if any(isinstance(m, SplitQKV) for m in model.modules()):  # targets q/v: q, k, v are separate Linears
        base = split_qkv(base)
    plain = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    torch.testing.assert_close(logits(plain), logits(model), rtol=1e-6, atol=1e-6)


def test_batchnorm_statistics_choice():
    x, _ = batch()
    for stats, should_change in (("update", True), ("frozen", False)):
        model = apply_method(base_model("cnn"), "batchnorm", bn_stats=stats)
        bn = next(m for m in model.modules() if isinstance(m, BN_TYPES))
        before = bn.running_mean.clone()
        model.train()
        model(x * 3 + 1)
        assert (not torch.equal(before, bn.running_mean)) == should_change, stats
    with pytest.raises(ValueError, match="bn_stats"):
        apply_method(base_model("cnn"), "batchnorm", bn_stats="sometimes")


def test_frozen_backbone_keeps_bn_statistics_in_train_mode():
    model = apply_method(base_model("cnn"), "linear_probe")
    before = copy.deepcopy(model.state_dict())
    model.train()
    model(batch()[0] * 5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- bad input -------------------------------------------------------------------------------

def test_unknown_method_is_a_clear_error():
    with pytest.raises(MethodError, match="unknown method 'loraa'.*available:.*lora"):
        apply_method(base_model("vit"), "loraa")


def test_wrong_family_names_the_supported_ones():
    with pytest.raises(MethodError, match="supports cnn backbones.*vit backbone"):
        apply_method(base_model("vit"), "batchnorm")


def test_unknown_hyper_parameter_is_rejected():
    with pytest.raises(MethodError, match="no hyper-parameter"):
        apply_method(base_model("cnn"), "batchnorm", rank=4)


@pytest.fixture
def saved_bitfit(tmp_path):
    model = train_steps(apply_method(base_model("vit"), "bitfit"))
    save_adapter(model, tmp_path, AdapterConfig(method="bitfit", backbone=TINY_VIT, num_classes=NUM_CLASSES))
    return tmp_path


def _edit_config(folder, **changes):
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes,message", [
    ({"num_classes": 5}, "wrong shape"),
    ({"method": "no_such_method"}, "unknown method"),
    ({"method": "attention"}, "does not match"),
    ({"backbone": TINY_CNN}, "does not match|supports"),
    ({"surprise": 1}, "unknown field"),
])
def test_tampered_config_is_a_clear_error(saved_bitfit, changes, message):
    _edit_config(saved_bitfit, **changes)
    with pytest.raises(MethodError, match=message):
        load_adapter(saved_bitfit, pretrained=False)


def test_extra_or_missing_tensor_is_a_clear_error(saved_bitfit):
    path = saved_bitfit / WEIGHTS_NAME
    state = load_file(str(path))
    save_file({**state, "blocks.0.attn.qkv.weight": torch.zeros(96, 32)}, str(path))
    with pytest.raises(MethodError, match="1 unexpected"):
        load_adapter(saved_bitfit, pretrained=False)
    state.pop(next(iter(state)))
    save_file(state, str(path))
    with pytest.raises(MethodError, match="1 tensor\\(s\\) missing"):
        load_adapter(saved_bitfit, pretrained=False)


def test_not_an_adapter_folder(tmp_path):
    with pytest.raises(MethodError, match="not a MedPEFT adapter folder"):
        load_adapter(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(MethodError, match="not valid JSON"):
        load_adapter(tmp_path)
