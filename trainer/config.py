"""One configuration dataclass for every run (as in timm's ``train.py``): YAML sets defaults,
command-line flags override, and the resolved configuration is saved next to the results.

:meth:`TrainConfig.validate` owns every range and choice check (the CLI, HPO, benchmark grids and
the app all call it); its messages name the option and its flag: ``img_size (--img-size) must be an
integer of at least 16, got -5``. The parser lives in :mod:`trainer.cli`.

Method hyper-parameters get flags generated from the registry: ``--lora-rank 16``,
``--adaptformer-bottleneck 32``, ``--batchnorm-bn-stats frozen`` ... (or ``--hp rank=16``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adapters import MethodError, get_method
from adapters.registry import resolve_hparams

DEFAULT_VIT = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
DEFAULT_CNN = "resnet50.a1_in1k"
RUNS_DIR = "runs"
"""Where a run goes without ``output_dir``: ``runs/<method>-<dataset>-<YYYYmmdd-HHMM>``."""


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
    # foundation backbones (MED-PEFT): self-supervised weights, MAE fine-tuning's pooling, normalisation
    init_checkpoint: str | None = None  # .pth / .safetensors / hf-hub:org/name[/file] (adapters.checkpoints)
    global_pool: str | None = None  # ViT pooling: token | avg (default: avg with fc_norm for an init checkpoint)
    fc_norm: bool | None = None
    drop_path: float | None = None  # stochastic depth rate (timm drop_path_rate)
    normalization: str | None = None  # mean/std preset: mrm | cxr_mae | imagenet (default: the backbone's)
    mean: float | None = None  # one value for all 3 channels (grayscale copied to RGB), overrides the preset
    std: float | None = None
    # data
    fraction: float = 1.0
    val_frac: float | None = None  # None: the dataset's default (trainer.data.splits.SPLIT_DEFAULTS)
    test_frac: float | None = None
    split_seed: int = 0  # the one train/val/test split every training seed shares
    split_lists: str | None = None  # folder of MED-PEFT split lists (train_1/10/list, val_list, test_list .txt)
    label_fraction: int = 100  # with split_lists: train on train_1.txt (1), train_10.txt (10) or train_list.txt
    labels_from: str = "list"  # with split_lists: the lists' labels (list) or the dataset's (dataset)
    resplit_per_seed: bool = False  # draw a new split per training seed (split seed = training seed)
    # fairness and calibration (trainer/loops/assess.py): subgroups, their minimum size, the interval
    group_columns: str | None = None  # csv / imagefolder: metadata columns that become subgroups ("sex,age")
    age_bins: str | None = None  # age bin edges in years, default "40,60,80" (<40, 40-59, 60-79, 80+)
    min_group_size: int = 30  # a smaller subgroup is listed as too small, not scored
    bootstrap_resamples: int = 1000  # resamples of the test headline's 95% interval (0: none)
    select_on: str = "headline"  # the validation score that picks the epoch: headline | worst_group (FairTune)
    cache_dir: str | None = None  # decoded-image cache; default $MEDPEFT_CACHE_DIR/images (trainer.data.cache)
    num_workers: int | None = None  # None: sized to the machine, min(8, CPUs - 1) (trainer.loops.precision)
    cache_features: bool = True  # linear_probe: train the head on cached frozen-backbone features
    skip_bad_images: bool = False  # drop undecodable images (listed in the data notes) instead of failing
    # optimisation
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int = 20
    patience: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adamw"  # adamw | loraplus (peft's create_loraplus_optimizer; LoRA/DoRA only)
    loraplus_lr_ratio: float = 16.0  # LoRA+: B matrices at lr * ratio
    layer_decay: float | None = None  # layer-wise lr decay (BEiT/MAE): block i at lr * decay^(L - i)
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    mixed_precision: str = "auto"  # auto (bf16/fp16 on CUDA, fp32 on CPU) | no | bf16 | fp16; trainables stay fp32
    compile: bool = False  # torch.compile the model (in place)
    grad_checkpointing: bool = False  # recompute block activations in backward (timm / the U-Net's own)
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
    output_dir: str | None = None  # None: runs/<method>-<dataset>-<time>
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: bool = False  # keep each seed's resume checkpoint and best-epoch copy after the run
    push_to_hub: str | None = None
    hub_private: bool = True

    def split_seed_for(self, seed: int) -> int:
        """The seed of the train/val/test split that training seed ``seed`` uses."""
        return seed if self.resplit_per_seed else self.split_seed

    def resolved_backbone(self) -> str:
        if self.backbone:
            return self.backbone
        fams = get_method(self.method).families
        return DEFAULT_VIT if "vit" in fams else DEFAULT_CNN

    def validate(self) -> "TrainConfig":
        """Check every option (types, ranges, choices, combinations); fill in the method's default
        hyper-parameters and the default ``output_dir``. Raises ConfigError naming the option."""
        check_types(self)
        _check_choices(self)
        for name, (lo, hi, lo_open) in RANGES.items():
            value = getattr(self, name, None)
            if value is not None:
                _check_range(name, value, lo, hi, lo_open)
        _check_combinations(self)
        method = get_method(self.method)
        try:
            self.hparams = resolve_hparams(method, self.hparams)
        except MethodError as e:
            raise ConfigError(str(e)) from None
        check_hparams(method.name, self.hparams, method.defaults)
        if self.optimizer == "loraplus" and self.method not in ("lora", "dora"):
            raise ConfigError(f"optimizer loraplus (--optimizer) trains LoRA's B matrices faster: it needs method "
                              f"lora or dora, not {self.method!r}")
        if self.output_dir is None:
            self.output_dir = default_output_dir(self.method, self.dataset)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def flag(name: str) -> str:
    """The command-line flag of option ``name``: ``img_size`` -> ``--img-size``."""
    return "--" + name.replace("_", "-")


def _named(name: str) -> str:
    return f"{name} ({flag(name)})"


# option: (low, high, low is exclusive). Options of other tasks are checked too: a config is one file.
RANGES: dict[str, tuple[float, float, bool]] = {
    "img_size": (16, 4096, False), "fraction": (0, 1, True), "val_frac": (0, 0.95, True),
    "test_frac": (0, 0.95, True), "num_workers": (0, 256, False), "epochs": (1, 100_000, False),
    "patience": (1, 100_000, False), "batch_size": (1, 65_536, False), "lr": (0, 10, True),
    "weight_decay": (0, 10, False), "warmup_epochs": (0, 100_000, False), "label_smoothing": (0, 0.99, False),
    "grad_clip": (0, 1e6, False), "max_steps_per_epoch": (1, 10**9, False), "resolution": (8, 4096, False),
    "max_train_steps": (1, 10**9, False), "validation_steps": (0, 10**9, False),
    "num_inference_steps": (1, 1000, False), "guidance_scale": (0, 100, False), "fid_samples": (0, 10**7, False), "split_seed": (0, 2**32 - 1, False),
    "layer_decay": (0, 1, True), "drop_path": (0, 0.99, False), "label_fraction": (1, 100, False),
    "mean": (0, 1, False), "std": (0, 10, True), "loraplus_lr_ratio": (0, 1e4, True),
    "min_group_size": (1, 10**9, False), "bootstrap_resamples": (0, 10**6, False),
}
CHOICES: dict[str, tuple[str, ...]] = {"task": ("classification", "generation"),
                                       "mixed_precision": ("auto", "no", "bf16", "fp16"), "labels_from": ("list", "dataset"),
                                       "select_on": ("headline", "worst_group"),
                                       "optimizer": ("adamw", "loraplus")}
# Hyper-parameters shared by several methods: (low, high, low is exclusive). Method-specific values
# (``targets``, ``bn_stats``) are checked by the method itself (trainer.preflight applies it first).
HPARAM_RANGES: dict[str, tuple[float, float, bool]] = {
    "rank": (1, 4096, False), "alpha": (0, 1e6, True), "dropout": (0, 0.99, False), "bottleneck": (1, 65_536, False),
    "num_prompts": (1, 4096, False), "init_std": (0, 10, False), "init_scale": (0, 10, False),
}
_KINDS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
_KIND_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def _check_range(name: str, value, lo, hi, lo_open, what: str | None = None) -> None:
    what = what or _named(name)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    kind = "an integer" if isinstance(value, int) else "a number"
    if value < lo or lo_open and value == lo:
        bound = f"{'greater than' if lo_open else 'of at least'} {lo}" if hi >= 1e5 else \
            f"in {'(' if lo_open else '['}{lo}, {hi}]"
        raise ConfigError(f"{what} must be {kind} {bound}, got {value!r}")
    if value > hi:
        raise ConfigError(f"{what} must be {kind} of at most {hi}, got {value!r}")


def _kind(annotation: str) -> tuple[str | None, bool]:
    """(scalar kind or None, None allowed) of a field annotation such as ``int | None``."""
    parts = [p.strip() for p in str(annotation).split("|")]
    optional = "None" in parts
    parts = [p for p in parts if p != "None"]
    return (parts[0] if len(parts) == 1 and parts[0] in _KINDS else None), optional


def check_types(cfg: TrainConfig) -> None:
    """Every scalar option has its declared type (YAML and the app can pass anything). A number
    written as a string in YAML (``lr: 1e-3`` is a string in YAML 1.1) is read as the number."""
    for name, f in FIELDS.items():
        value = getattr(cfg, name)
        kind, optional = _kind(f.type)
        if value is None and optional:
            continue
        if kind == "float" and isinstance(value, str):
            try:
                value = float(value)
                setattr(cfg, name, value)
            except ValueError:
                pass
        if kind is not None:
            ok = isinstance(value, _KINDS[kind]) and (kind == "bool" or not isinstance(value, bool))
            if not ok:
                raise ConfigError(f"{_named(name)} must be {_KIND_WORDS[kind]}"
                                  f"{' or empty' if optional else ''}, got {value!r}")
    for name, item in (("seeds", int), ("validation_prompts", str)):
        value = getattr(cfg, name)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, item) and not isinstance(v, bool)
                                                           for v in value):
            raise ConfigError(f"{_named(name)} must be a list of {'integers' if item is int else 'strings'}, "
                              f"got {value!r}")
        setattr(cfg, name, list(value))
    for name in ("hparams", "dataset_options"):
        if not isinstance(getattr(cfg, name), dict):
            raise ConfigError(f"{name} must be a mapping of key: value, got {getattr(cfg, name)!r}")


def _check_choices(cfg: TrainConfig) -> None:
    for name, choices in CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise ConfigError(f"{_named(name)} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}")
    try:
        method = get_method(cfg.method)
    except MethodError as e:
        raise ConfigError(str(e)) from None
    fams = method.families
    if cfg.task == "generation" and "unet" not in fams:
        raise ConfigError(f"method {cfg.method!r} does not apply to the Stable Diffusion U-Net (task generation); "
                          f"U-Net methods: {', '.join(_methods('unet'))}")
    if cfg.task == "classification" and not {"vit", "cnn"} & set(fams):
        raise ConfigError(f"method {cfg.method!r} is for the Stable Diffusion U-Net (--task generation); "
                          f"classification methods: {', '.join(_methods('vit', 'cnn'))}")
    datasets = dataset_names(cfg.task)
    if cfg.dataset not in datasets:
        raise ConfigError(f"unknown dataset {cfg.dataset!r} for task {cfg.task}; choose one of {', '.join(datasets)}")
    for name in ("backbone", "data_dir", "cache_dir", "base_model", "output_dir", "push_to_hub"):
        value = getattr(cfg, name)
        if value is not None and not value.strip():
            raise ConfigError(f"{_named(name)} must not be empty")
    if cfg.push_to_hub is not None:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(cfg.push_to_hub)
        except HFValidationError:
            raise ConfigError(f"{_named('push_to_hub')} must be a Hub repo id such as org/name, "
                              f"got {cfg.push_to_hub!r}") from None


def _methods(*families: str) -> list[str]:
    from adapters import METHODS

    return sorted(m.name for m in METHODS.values() if set(families) & set(m.families))


def dataset_names(task: str = "classification") -> list[str]:
    """The datasets of a task: trainer.data.DATASETS or the text-to-image ones."""
    if task == "generation":
        from .data.text2img import GEN_DATASETS

        return list(GEN_DATASETS)
    from .data import DATASETS

    return list(DATASETS)


def _check_combinations(cfg: TrainConfig) -> None:
    if cfg.group_columns is not None:
        from .data.subgroups import parse_columns

        if not parse_columns(cfg.group_columns):
            raise ConfigError("--group-columns: name at least one metadata column, e.g. sex,age")
    if cfg.age_bins is not None:
        from .data import DataError
        from .data.subgroups import check_age_bins

        try:
            check_age_bins(cfg.age_bins)
        except DataError as e:
            raise ConfigError(f"--age-bins: {e}") from None
    if cfg.normalization is not None:
        from adapters.checkpoints import NORMALIZATION_PRESETS

        if cfg.normalization.lower() not in NORMALIZATION_PRESETS:
            raise ConfigError(f"{_named('normalization')} must be one of {', '.join(NORMALIZATION_PRESETS)}, "
                              f"got {cfg.normalization!r}")
    if (cfg.mean is None) != (cfg.std is None):
        raise ConfigError("--mean and --std go together: give both (one value each, for all three channels)")
    if cfg.split_lists is None and (cfg.label_fraction != 100 or cfg.labels_from != "list"):
        raise ConfigError("--label-fraction and --labels-from choose among MED-PEFT split lists: add --split-lists DIR")
    if cfg.split_lists is not None and cfg.fraction != 1.0:
        raise ConfigError("--fraction subsamples drawn splits; with --split-lists use --label-fraction 1|10|100")
    if not cfg.seeds:
        raise ConfigError(f"{_named('seeds')} needs at least one seed")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"{_named('seeds')} lists a seed twice: {cfg.seeds}")
    bad = [s for s in cfg.seeds if not 0 <= s < 2**32]
    if bad:
        raise ConfigError(f"{_named('seeds')} must be integers in [0, 2**32), got {bad}")
    if cfg.val_frac is not None and cfg.test_frac is not None and cfg.val_frac + cfg.test_frac >= 1:
        raise ConfigError(f"val_frac + test_frac (--val-frac, --test-frac) must leave images to train on: "
                          f"{cfg.val_frac} + {cfg.test_frac} >= 1")
    if cfg.task == "classification" and cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(f"{_named('warmup_epochs')} ({cfg.warmup_epochs}) is longer than the run "
                          f"({_named('epochs')} {cfg.epochs}): the learning rate would never reach --lr")
    if cfg.task == "generation" and cfg.resolution % 8:
        raise ConfigError(f"{_named('resolution')} must be a multiple of 8 (the VAE downsamples by 8), "
                          f"got {cfg.resolution}")
    if cfg.fid_samples == 1:
        raise ConfigError(f"{_named('fid_samples')} must be 0 (no FID) or at least 2, got 1")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("resume (--resume) and overwrite (--overwrite) contradict each other: continue the run "
                          "or replace it, not both")
    if cfg.resume and cfg.output_dir is None:
        raise ConfigError("resume (--resume) continues a run folder: give its --output-dir")


def check_hparams(method: str, hparams: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Each hyper-parameter has its default's type and the range of :data:`HPARAM_RANGES`."""
    for key, value in hparams.items():
        default = defaults.get(key)
        what = f"{method} hyper-parameter {key} ({flag(method + '_' + key)})"
        kind = next((k for k in ("bool", "int", "float", "str") if type(default).__name__ == k), None)
        if kind is not None:
            ok = isinstance(value, _KINDS[kind]) and (kind == "bool" or not isinstance(value, bool))
            if not ok:
                raise ConfigError(f"{what} must be {_KIND_WORDS[kind]}, got {value!r}")
        if key in HPARAM_RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_range(key, value, *HPARAM_RANGES[key], what=what)


def default_output_dir(method: str, dataset: str, root: str | Path = RUNS_DIR) -> str:
    """``runs/<method>-<dataset>-<YYYYmmdd-HHMM>``, with ``-2``, ``-3`` ... if that folder exists."""
    base = Path(root) / f"{method}-{dataset}-{time.strftime('%Y%m%d-%H%M')}"
    out, k = base, 2
    while out.exists():
        out = base.with_name(f"{base.name}-{k}")
        k += 1
    return str(out)


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; give a YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text (YAML) file") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ConfigError(f"{path} is not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option: value")
    unknown = sorted(set(map(str, data)) - set(FIELDS))
    if unknown:
        import difflib

        hints = [f"{u} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(u, FIELDS, 1)) else u
                 for u in unknown]
        raise ConfigError(f"{path}: unknown option(s) {', '.join(hints)}; see python -m trainer --help")
    return data
