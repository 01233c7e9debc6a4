"""--grad-checkpointing (issue 16): timm's set_grad_checkpointing reaches the timm model inside a peft
wrapper, and gives the same loss and gradients as training without it."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from adapters import apply_method, create_backbone, unwrap
from adapters.backbones import TINY_CNN, TINY_VIT
from trainer.config import ConfigError
from trainer.loops.precision import enable_grad_checkpointing


def _loss_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("backbone,method", [(TINY_VIT, "lora"), (TINY_VIT, "full"), (TINY_CNN, "ssf")])
def test_same_loss_and_gradients_with_and_without_checkpointing(backbone, method):
    torch.manual_seed(0)
    model = apply_method(create_backbone(backbone, 3, pretrained=False), method).train()
    for p in model.parameters():  # LoRA's B starts at zero: perturb so every gradient is non-trivial
        if p.requires_grad:
            p.data.add_(0.05 * torch.randn_like(p))
    ckpt = enable_grad_checkpointing(copy.deepcopy(model))
    assert unwrap(ckpt).grad_checkpointing is True and unwrap(model).grad_checkpointing is False
    if method == "lora":
        assert unwrap(ckpt) is not ckpt  # a peft wrapper: the flag reached the timm model inside
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    loss_a, grads_a = _loss_and_grads(model, x, y)
    loss_b, grads_b = _loss_and_grads(ckpt, x, y)
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointing_keeps_fewer_activations():
    model = apply_method(create_backbone(TINY_VIT, 3, pretrained=False, img_size=64), "lora").train()
    x = torch.randn(2, 3, 64, 64)

    def saved(m):
        n = [0]

        def pack(t):
            n[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(x)
        return n[0]

    plain = saved(model)
    assert saved(enable_grad_checkpointing(model)) < plain


def test_a_model_without_checkpointing_is_a_clear_error():
    with pytest.raises(ConfigError, match="not available for Sequential"):
        enable_grad_checkpointing(nn.Sequential(nn.Linear(2, 2)))
