"""Issue 16's runtime defaults (trainer/loops/precision.py): resolved once by one pure function, they
reach the model, the optimizer, the accelerator and the loaders, and results.json records them.
Nothing here needs a GPU: CUDA capabilities are faked, and nothing is timed."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import trainer.loops.precision as precision
from adapters import apply_method, create_backbone, unwrap
from adapters.backbones import TINY_CNN, TINY_VIT
from tests.helpers import write_shapes
from trainer.__main__ import main as trainer_main
from trainer.config import ConfigError, TrainConfig
from trainer.loops.optim import build_optimizer, make_accelerator
from trainer.loops.precision import (Runtime, config_runtime, default_workers, loader_options, prepare_model,
                                     resolve_precision, resolve_runtime)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device of the given compute capability, as far as resolve_runtime can tell."""

    def make(capability: tuple[int, int]):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
        monkeypatch.setattr(torch.version, "hip", None)

    return make


def test_cpu_defaults_are_fp32_contiguous_unfused_and_off():
    cfg = TrainConfig(method="lora")
    assert cfg.mixed_precision == "auto" and cfg.compile is False and cfg.grad_checkpointing is False
    rt = resolve_runtime(cfg, "cnn", device="cpu")
    rec = rt.record()
    assert rec["precision"] == "no" and rec["memory_format"] == "contiguous" and rec["grad_scaler"] is False
    assert rec["compile"] is False and rec["grad_checkpointing"] is False and rec["device"] == "cpu"
    assert not (rt.fused_optimizer or rt.tf32 or rt.pin_memory or rt.non_blocking)
    assert cfg.num_workers is None and rec["num_workers"] == default_workers()  # sized to the machine
    assert resolve_runtime(TrainConfig(method="lora", num_workers=0), "cnn", device="cpu").num_workers == 0
    json.dumps(rec)  # goes into results.json as is


@pytest.mark.parametrize("capability,expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"),
                                                 ((6, 0), "fp16")])
def test_auto_precision_on_a_faked_gpu(fake_gpu, capability, expected):
    fake_gpu(capability)
    rt = resolve_runtime(TrainConfig(), "vit")  # device defaults to CUDA when available
    assert rt.device == "cuda" and rt.precision == expected and rt.grad_scaler == (expected == "fp16")
    assert rt.fused_optimizer and rt.tf32 and rt.pin_memory and rt.non_blocking
    assert rt.channels_last is False  # ViTs stay contiguous
    assert resolve_runtime(TrainConfig(), "cnn").record()["memory_format"] == "channels_last"
    assert resolve_runtime(TrainConfig(), "unet").channels_last is False
    assert loader_options(TrainConfig(num_workers=3)) == {"num_workers": 3, "pin_memory": True}


def test_explicit_precision_is_used_as_given_and_a_bad_one_is_an_error(fake_gpu):
    assert resolve_precision("fp16", "cpu") == "fp16" and resolve_precision("no", "cuda") == "no"
    fake_gpu((9, 0))
    assert resolve_runtime(TrainConfig(mixed_precision="fp16"), "vit").precision == "fp16"
    with pytest.raises(ConfigError, match="--mixed-precision"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(ConfigError, match="--mixed-precision"):
        TrainConfig(mixed_precision="fp8").validate()


def test_flags_reach_the_runtime_and_the_cli(fake_gpu):
    from trainer.cli import build_parser

    args = build_parser().parse_args(["--method", "lora", "--compile", "--grad-checkpointing",
                                      "--mixed-precision", "bf16"])
    assert args.compile is True and args.grad_checkpointing is True and args.mixed_precision == "bf16"
    rt = resolve_runtime(TrainConfig(compile=True, grad_checkpointing=True), "vit", device="cpu")
    assert rt.compile and rt.grad_checkpointing
    # the generation task's older flag turns on the same thing
    assert resolve_runtime(TrainConfig(gradient_checkpointing=True), "unet", device="cpu").grad_checkpointing
    fake_gpu((8, 6))
    assert config_runtime(TrainConfig(method="bitfit", backbone=TINY_CNN, pretrained=False)).channels_last
    assert not config_runtime(TrainConfig(method="lora", backbone=TINY_VIT)).channels_last  # read on meta


def _rt(**kw) -> Runtime:
    base = dict(device="cpu", precision="no", channels_last=False, fused_optimizer=False, tf32=False,
                pin_memory=False, non_blocking=False, num_workers=0, compile=False, grad_checkpointing=False)
    base.update(kw)
    return Runtime(**base)


def test_prepare_model_applies_channels_last_checkpointing_and_compile():
    cnn = apply_method(create_backbone(TINY_CNN, 3, pretrained=False), "ssf")
    cnn = prepare_model(cnn, _rt(channels_last=True))
    conv = next(m for m in cnn.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    vit = apply_method(create_backbone(TINY_VIT, 3, pretrained=False), "lora")
    names = list(vit.state_dict())
    assert unwrap(vit).grad_checkpointing is False
    out = prepare_model(vit, _rt(grad_checkpointing=True, compile=True))
    assert out is vit and unwrap(vit).grad_checkpointing is True  # reached the timm model inside peft
    assert precision.is_compiled(vit) and list(vit.state_dict()) == names  # in place: names unchanged
    plain = prepare_model(create_backbone(TINY_VIT, 3, pretrained=False), _rt())
    assert not precision.is_compiled(plain) and plain.grad_checkpointing is False


def test_unet_uses_its_own_gradient_checkpointing(tmp_path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, attention_head_dim=2)
    assert not unet.is_gradient_checkpointing
    prepare_model(unet, _rt(grad_checkpointing=True))
    assert unet.is_gradient_checkpointing


def test_fused_adamw_is_an_option_of_the_one_optimizer_builder():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    fused = build_optimizer(model, lr=1e-3, weight_decay=0.05, fused=True)
    assert fused.param_groups and all(g["fused"] is True for g in fused.param_groups)
    plain = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    assert not any(g["fused"] for g in plain.param_groups)
    layered = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5, fused=True)
    assert {g["weight_decay"] for g in layered.param_groups} == {0.05, 0.0}  # decay groups kept


def test_make_accelerator_resolves_auto_and_non_blocking_on_cpu():
    acc = make_accelerator("auto", non_blocking=True)
    assert acc.mixed_precision == "no" and acc.non_blocking is False  # CPU: nothing to overlap


def test_tiny_cli_run_records_the_runtime_and_reaches_the_model(tmp_path, monkeypatch):
    seen = []
    real = precision.enable_grad_checkpointing

    def spy(model):
        seen.append(real(model))
        return seen[-1]

    monkeypatch.setattr(precision, "enable_grad_checkpointing", spy)
    data = write_shapes(tmp_path / "shapes", per_class=6, size=32)
    out = tmp_path / "run"
    rc = trainer_main(["--method", "bitfit", "--dataset", "imagefolder", "--data-dir", str(data), "--backbone",
                       TINY_CNN, "--no-pretrained", "--epochs", "1", "--batch-size", "8", "--img-size", "32",
                       "--num-workers", "0", "--grad-checkpointing", "--output-dir", str(out)])
    assert rc == 0
    runtime = json.loads((out / "results.json").read_text())["runtime"]
    assert runtime["precision"] == "no" and runtime["memory_format"] == "contiguous"
    assert runtime["compile"] is False and runtime["grad_checkpointing"] is True
    assert runtime["fused_optimizer"] is False and runtime["num_workers"] == 0
    assert len(seen) == 1 and unwrap(seen[0]).grad_checkpointing is True


@pytest.mark.slow
def test_tiny_generation_run_records_the_runtime_and_checkpoints_the_unet(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from trainer.diffusion import make_tiny_pipeline
    from trainer.loops.generate import run

    monkeypatch.setenv("MEDPEFT_CACHE", str(tmp_path / "cache"))
    seen = []
    real = precision.enable_grad_checkpointing
    monkeypatch.setattr(precision, "enable_grad_checkpointing", lambda m: seen.append(real(m)) or seen[-1])
    data = tmp_path / "pairs"
    (data / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["path,text"]
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(data / "img" / f"{i}.png")
        lines.append(f'img/{i}.png,"No acute cardiopulmonary abnormality, case {i}."')
    (data / "data.csv").write_text("\n".join(lines) + "\n")
    cfg = TrainConfig(task="generation", method="lora", dataset="csv", data_dir=str(data),
                      base_model=str(make_tiny_pipeline(tmp_path / "pipe")), resolution=32, max_train_steps=2,
                      validation_steps=0, batch_size=2, num_inference_steps=2, fid_samples=0, num_workers=0,
                      output_dir=str(tmp_path / "run"), test_frac=0.34, seeds=[0], grad_checkpointing=True)
    results = run(cfg)
    rt = json.loads((tmp_path / "run" / "results.json").read_text())["runtime"]
    assert rt == results["runtime"] and rt["precision"] == "no" and rt["grad_checkpointing"] is True
    assert rt["memory_format"] == "contiguous" and rt["compile"] is False
    assert len(seen) == 1 and unwrap(seen[0]).is_gradient_checkpointing
