"""SSF's memory-saving scale-shift (issue 16): the same outputs and gradients as the plain
``y * scale + shift``, while keeping fewer activations for backward."""
from __future__ import annotations

import torch

import adapters.ssf as ssf
from adapters import apply_method, create_backbone
from adapters.backbones import TINY_VIT


def _plain(y, scale, shift):
    return y * scale + shift


def test_gradcheck_in_double_precision():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    scale = (torch.rand(5, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    shift = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(ssf._ScaleShiftFn.apply, (y, scale, shift))


def test_matches_the_plain_expression_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn(4, 7, 6, generator=g)
    scale0, shift0 = torch.randn(6, generator=g), torch.randn(6, generator=g)
    grads = []
    for fn in (_plain, ssf.scale_shift):
        y, scale, shift = (t.clone().requires_grad_() for t in (y0, scale0, shift0))
        out = fn(y, scale, shift)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), y.grad, scale.grad, shift.grad))
    assert torch.equal(grads[0][0], grads[1][0])  # the forward is the very same expression
    for a, b in zip(grads[0][1:], grads[1][1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_zero_scale_gives_finite_gradients():
    y = torch.randn(3, 4, requires_grad=True)
    scale = torch.tensor([1.0, 0.0, 2.0, 0.5], requires_grad=True)
    shift = torch.zeros(4, requires_grad=True)
    ssf.scale_shift(y, scale, shift).sum().backward()
    assert torch.isfinite(scale.grad).all() and scale.grad[1] == 0
    torch.testing.assert_close(y.grad, scale.expand(3, 4))


def _saved_bytes(model, x) -> int:
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(n for ptr, n in storages.items() if ptr not in params)


def test_ssf_vit_same_gradients_and_fewer_saved_activations(monkeypatch):
    torch.manual_seed(0)
    model = apply_method(create_backbone(TINY_VIT, 3, pretrained=False), "ssf", init_std=0.02).train()
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0])

    def grads():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ours, ours_saved = grads(), _saved_bytes(model, x)
    monkeypatch.setattr(ssf, "scale_shift", _plain)
    plain, plain_saved = grads(), _saved_bytes(model, x)
    assert ours.keys() == plain.keys() and any("ssf_scale" in n for n in ours)
    for n in ours:
        torch.testing.assert_close(ours[n], plain[n], rtol=1e-4, atol=1e-6, msg=n)
    assert ours_saved < plain_saved
