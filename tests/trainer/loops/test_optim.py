"""The one optimizer builder both loops use: AdamW over trainable parameters, weight decay on
weight matrices only (never on biases, norm gains or DiffFit's scale factors)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from adapters import apply_method
from trainer.loops.optim import build_optimizer, build_scheduler


def test_weight_decay_only_on_matrices_of_trainable_parameters():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    none = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decay == {id(model[2].weight)}
    assert none == {id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[2].bias)}


def test_difffit_scale_factors_and_norms_get_no_decay(tmp_path):
    from diffusers import UNet2DConditionModel

    from trainer.diffusion import make_tiny_pipeline

    folder = make_tiny_pipeline(tmp_path / "tiny")
    unet = apply_method(UNet2DConditionModel.from_pretrained(str(Path(folder) / "unet")), "difffit")
    opt = build_optimizer(unet, lr=1e-3, weight_decay=0.01)
    names = {id(p): n for n, p in unet.named_parameters()}
    decayed = [names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    free = [names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert any("difffit_gamma" in n for n in free) and not any("difffit_gamma" in n for n in decayed)
    assert all(unet.get_parameter(n).ndim >= 2 for n in decayed)


def test_scheduler_warms_up_then_decays_to_zero():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, epochs=2, steps_per_epoch=5, warmup_epochs=1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.2 and lrs[4] == 1.0 and lrs[5] > lrs[9] >= 0.0
    assert opt.param_groups[0]["lr"] == 0.0
