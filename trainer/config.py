"""One configuration dataclass for every run (as in timm's ``train.py``): YAML sets defaults,
command-line flags override, and the resolved configuration is saved next to the results.

Method hyper-parameters get flags generated from the registry: ``--lora-rank 16``,
``--adaptformer-bottleneck 32``, ``--batchnorm-bn-stats frozen`` ... (or ``--hp rank=16``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adapters import METHODS, get_method
from adapters.registry import resolve_hparams

DEFAULT_VIT = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
DEFAULT_CNN = "resnet50.a1_in1k"


class ConfigError(ValueError):
    pass


@dataclass
class TrainConfig:
    # what
    task: str = "classification"  # classification | generation
    method: str = "lora"
    dataset: str = "imagefolder"
    data_dir: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None  # None: a ViT-B/16 for ViT methods, ResNet50 for CNN-only methods
    pretrained: bool = True
    img_size: int | None = None
    hparams: dict[str, Any] = field(default_factory=dict)  # the method's own hyper-parameters
    # data
    fraction: float = 1.0
    val_frac: float = 0.1
    test_frac: float = 0.2
    cache_dir: str | None = None  # decoded-image cache; default <output_dir>/../.cache
    num_workers: int = 2
    cache_features: bool = True  # linear_probe: train the head on cached frozen-backbone features
    # optimisation
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int = 20
    patience: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    mixed_precision: str = "no"  # no | bf16 | fp16 (trainable parameters stay fp32)
    max_steps_per_epoch: int | None = None  # cap (quick runs, smoke tests)
    # generation (task=generation)
    base_model: str | None = None  # diffusers pipeline: Hub id or local save_pretrained folder
    resolution: int = 512
    max_train_steps: int = 1000
    validation_steps: int = 250  # write validation images every N steps
    validation_prompts: list[str] = field(default_factory=list)
    gradient_checkpointing: bool = False
    ema: bool = False
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    fid_samples: int = 0  # generated images for FID at the end (0: skip)
    # output
    output_dir: str = "runs/run"
    resume: bool = False
    overwrite: bool = False
    push_to_hub: str | None = None
    hub_private: bool = True

    def resolved_backbone(self) -> str:
        if self.backbone:
            return self.backbone
        fams = get_method(self.method).families
        return DEFAULT_VIT if "vit" in fams else DEFAULT_CNN

    def validate(self) -> "TrainConfig":
        if self.task not in ("classification", "generation"):
            raise ConfigError(f"task must be classification or generation, not {self.task!r}")
        try:
            method = get_method(self.method)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.hparams = resolve_hparams(method, self.hparams)
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"--fraction must be in (0, 1], got {self.fraction}")
        if not 0 <= self.val_frac < 1 or not 0 <= self.test_frac < 1 or self.val_frac + self.test_frac >= 1:
            raise ConfigError("val_frac and test_frac must be fractions that leave data to train on")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"--mixed-precision must be no, bf16 or fp16, not {self.mixed_precision!r}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0:
            raise ConfigError("--lr must be positive")
        if not self.seeds:
            raise ConfigError("at least one seed")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option: value")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {unknown}; known: {', '.join(FIELDS)}")
    return data


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description=(
        "Fine-tune a timm backbone (or the Stable Diffusion U-Net) with a PEFT method, select on validation, "
        "test, save the adapter and optionally push it to the Hugging Face Hub."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML file of defaults (flags override)")
    p.add_argument("--seed", type=int, help="a single seed (same as --seeds N)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=None,
                   help="random backbone weights (tests)")
    p.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                   help="a method hyper-parameter (repeatable), e.g. --hp rank=16")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset loader option (repeatable), e.g. --dataset-option task=nine_partition_label")
    skip = {"pretrained", "hparams", "dataset_options"}
    for name, f in FIELDS.items():
        if name in skip:
            continue
        default = None  # None = not given on the command line (YAML / dataclass default applies)
        if f.type in ("bool",) or isinstance(_default(f), bool):
            p.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction, default=default)
        elif name in ("seeds", "validation_prompts"):
            p.add_argument(_flag(name), dest=name, nargs="+", default=default,
                           type=int if name == "seeds" else str)
        else:
            p.add_argument(_flag(name), dest=name, type=_arg_type(f), default=default)
    group = p.add_argument_group("method hyper-parameters (only the chosen method's are used)")
    for m in sorted(METHODS.values(), key=lambda m: m.name):
        for key, value in m.defaults.items():
            group.add_argument(f"--{m.name.replace('_', '-')}-{key.replace('_', '-')}",
                               dest=f"hp__{m.name}__{key}", default=None,
                               type=type(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                               else _parse_value, help=f"default {value!r}")
    return p


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _arg_type(f: dataclasses.Field):
    d = _default(f)
    if isinstance(d, bool):
        return None
    if isinstance(d, int):
        return int
    if isinstance(d, float):
        return float
    if f.name in ("img_size", "max_steps_per_epoch"):
        return int
    return str


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = load_yaml(args.config) if args.config else {}
    cli = vars(args)
    for name in FIELDS:
        if cli.get(name) is not None:
            values[name] = cli[name]
    if args.seed is not None:
        values["seeds"] = [args.seed]
    hparams = dict(values.get("hparams") or {})
    method = values.get("method", TrainConfig.method)
    for key, value in cli.items():
        if key.startswith("hp__") and value is not None:
            _, m, hp = key.split("__", 2)
            if m != method:
                raise ConfigError(f"--{m.replace('_', '-')}-{hp.replace('_', '-')} is a hyper-parameter of "
                                  f"{m!r}, but the method is {method!r}")
            hparams[hp] = value
    values["hparams"] = {**hparams, **_key_values(args.hp, "--hp")}
    values["dataset_options"] = {**(values.get("dataset_options") or {}),
                                 **_key_values(args.dataset_option, "--dataset-option")}
    return TrainConfig(**values).validate()


def _key_values(items: list[str], flag: str) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key] = _parse_value(value)
    return out
