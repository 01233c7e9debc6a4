"""SSF's memory-saving scale-shift (issue 16): ``inner(x) * scale + shift`` through one autograd
function that keeps only ``x`` and recomputes ``inner`` in backward - the same outputs and gradients
as the plain expression, fewer saved activations, merges unchanged."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import adapters.methods.ssf as ssf
from adapters import apply_method, create_backbone, merge_method
from adapters.backbones import TINY_CNN, TINY_VIT
from adapters.core import freeze


def _plain_forward(inner, x, scale, shift, dim):
    """The naive formula: what SSF computed before issue 16."""
    y = inner(x)
    if dim == 1 and y.ndim > 2:
        shape = (-1,) + (1,) * (y.ndim - 2)
        return y * scale.view(shape) + shift.view(shape)
    return y * scale + shift


def _frozen(module: nn.Module, dtype=torch.float64) -> nn.Module:
    module = module.to(dtype)
    freeze(module)
    return module


def _layers():
    g = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(4, generator=g))
        bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(4, generator=g))
    return [(nn.Linear(5, 6), (2, 3, 5), -1), (nn.LayerNorm(6), (2, 3, 6), -1),
            (nn.Conv2d(3, 4, 3, padding=1), (2, 3, 5, 5), 1), (bn, (2, 4, 3, 3), 1)]


@pytest.mark.parametrize("case", range(4), ids=["linear", "layernorm", "conv", "batchnorm_eval"])
def test_gradcheck_in_double_precision(case):
    inner, shape, dim = _layers()[case]
    inner = _frozen(inner)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, dtype=torch.float64, generator=g, requires_grad=True)
    channels = ssf._channels_and_dim(inner)[0]
    scale = (torch.rand(channels, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    shift = torch.randn(channels, dtype=torch.float64, generator=g, requires_grad=True)
    fn = lambda x, scale, shift: ssf._SSFRecomputeFn.apply(x, scale, shift, inner, dim)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, scale, shift))


@pytest.mark.parametrize("case", range(4), ids=["linear", "layernorm", "conv", "batchnorm_eval"])
def test_same_values_and_gradients_as_the_naive_formula(case):
    inner, shape, dim = _layers()[case]
    inner = _frozen(inner, torch.float32)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(*shape, generator=g)
    channels = ssf._channels_and_dim(inner)[0]
    scale0, shift0 = torch.randn(channels, generator=g), torch.randn(channels, generator=g)
    results = []
    for fn in (_plain_forward, ssf.ssf_forward):
        x, scale, shift = (t.clone().requires_grad_() for t in (x0, scale0, shift0))
        out = fn(inner, x, scale, shift, dim)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), x.grad, scale.grad, shift.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)  # the very same forward
    for a, b in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_zero_scale_is_exact():
    inner = _frozen(nn.Linear(4, 4), torch.float32)
    x = torch.randn(3, 4, requires_grad=True)
    scale = torch.tensor([1.0, 0.0, 2.0, 0.5], requires_grad=True)
    shift = torch.zeros(4, requires_grad=True)
    ssf.ssf_forward(inner, x, scale, shift, -1).sum().backward()
    torch.testing.assert_close(scale.grad, inner(x).detach().sum(0))  # recomputed y: no division by scale
    assert torch.isfinite(x.grad).all()


def test_uses_the_function_only_where_recomputing_is_safe():
    scale, shift = torch.ones(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    x = torch.randn(2, 4, 3, 3)
    frozen = _frozen(nn.BatchNorm2d(4), torch.float32)
    assert type(ssf.ssf_forward(frozen, x, scale, shift, 1).grad_fn).__name__ == "_SSFRecomputeFnBackward"
    live_bn = nn.BatchNorm2d(4).train()  # updates running statistics: recomputing would count the batch twice
    for p in live_bn.parameters():
        p.requires_grad_(False)
    before = live_bn.num_batches_tracked.clone()
    out = ssf.ssf_forward(live_bn, x, scale, shift, 1)
    assert "SSFRecompute" not in type(out.grad_fn).__name__
    out.sum().backward()
    assert live_bn.num_batches_tracked == before + 1
    trainable = nn.Linear(3, 4)  # the inner layer trains: plain autograd gives it its gradients
    y = ssf.ssf_forward(trainable, torch.randn(2, 3), scale, shift, -1)
    y.sum().backward()
    assert trainable.weight.grad is not None
    with torch.no_grad():
        assert ssf.ssf_forward(frozen, x, scale, shift, 1).grad_fn is None


def test_bf16_autocast_keeps_the_layer_dtype_and_matches_plain_gradients():
    inner = _frozen(nn.Linear(8, 6), torch.float32)
    g = torch.Generator().manual_seed(3)
    x0, scale0, shift0 = torch.randn(4, 8, generator=g), torch.rand(6, generator=g) + 0.5, torch.randn(6, generator=g)
    grads = []
    for fn in (_plain_forward, ssf.ssf_forward):
        x, scale, shift = (t.clone().requires_grad_() for t in (x0, scale0, shift0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(inner, x, scale, shift, -1)
        if fn is ssf.ssf_forward:
            assert out.dtype == torch.bfloat16  # not promoted to fp32 by the fp32 scale
        out.float().sum().backward()
        grads.append((x.grad, scale.grad, shift.grad))
    for a, b in zip(*grads):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def _saved_bytes(model, x) -> int:
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(n for ptr, n in storages.items() if ptr not in params)


@pytest.mark.parametrize("backbone", [TINY_VIT, TINY_CNN])
def test_ssf_model_same_gradients_fewer_saved_activations_and_exact_merge(backbone, monkeypatch):
    torch.manual_seed(0)
    model = apply_method(create_backbone(backbone, 3, pretrained=False), "ssf", init_std=0.02).train()
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0])

    def grads():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ours, ours_saved = grads(), _saved_bytes(model, x)
    monkeypatch.setattr(ssf, "ssf_forward", _plain_forward)
    plain, plain_saved = grads(), _saved_bytes(model, x)
    monkeypatch.undo()
    assert ours.keys() == plain.keys() and any("ssf_scale" in n for n in ours)
    for n in ours:
        torch.testing.assert_close(ours[n], plain[n], rtol=1e-4, atol=1e-6, msg=n)
    assert ours_saved < plain_saved
    full = create_backbone(backbone, 3, pretrained=False).train()
    assert ours_saved <= _saved_bytes(full, x)  # no more activations than full fine-tuning keeps
    model.eval()
    with torch.no_grad():
        before = model(x)
        merged = merge_method(copy.deepcopy(model))
        torch.testing.assert_close(merged(x), before, rtol=1e-4, atol=1e-5)
