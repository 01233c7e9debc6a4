"""The command line of ``python -m trainer``: one flag per :class:`~trainer.config.TrainConfig` option
(one line of help each, with the real default), the method hyper-parameter flags generated from the
registry, and ``--config`` YAML defaults that flags override.

A bad command line raises :class:`~trainer.config.ConfigError` with argparse's one-line reason
(``argument --lora-rank: invalid int value: 'four' (see --help)``), never a screen of usage.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
from typing import Any

from adapters import METHODS, OFFLINE_LITE0
from adapters.foundation import preset_names

from .config import (CHOICES, DEFAULT_CNN, DEFAULT_VIT, FIELDS, RUNS_DIR, ConfigError, TrainConfig, dataset_names,
                     flag, load_yaml)

HELP: dict[str, str] = {
    "task": "classification (a timm backbone) or generation (the Stable Diffusion U-Net)",
    "method": "PEFT method: {methods} (details: python -m adapters list)",
    "dataset": "dataset loader, reading its download layout: {datasets} (generation: {gen_datasets})",
    "data_dir": "the dataset's folder as downloaded (required)",
    "backbone": (f"a foundation preset ({', '.join(preset_names())}: downloads its Hub repo; licences and "
                 f"gating: python -m adapters backbones), a timm model name, or {OFFLINE_LITE0} (ImageNet weights "
                 f"that need no network) "
                 f"(default: ViT-B/16 {DEFAULT_VIT} for ViT methods, ResNet50 {DEFAULT_CNN} for CNN-only ones)"),
    "img_size": "input size in pixels (default: the backbone's own, e.g. 224)",
    "init_checkpoint": ("foundation weights to start from: a .pth (MAE format), .safetensors or hf-hub:org/name; "
                        "with a preset --backbone, a folder laid out as its Hub repo (default: none)"),
    "global_pool": "ViT pooling: token or avg (default: timm's; avg + fc_norm with --init-checkpoint, as MAE fine-tuning)",
    "fc_norm": "ViT: LayerNorm on the pooled features (default: with avg pooling of an init checkpoint)",
    "drop_path": "stochastic depth rate (default: the backbone's)",
    "normalization": "input mean/std preset: mrm, cxr_mae or imagenet (default: the backbone's own)",
    "mean": "input mean for all three channels (grayscale copied to RGB; overrides --normalization)",
    "std": "input std for all three channels (overrides --normalization)",
    "split_lists": "folder of MED-PEFT split lists: train on exactly the listed images (default: drawn splits)",
    "label_fraction": "with --split-lists: 1, 10 or 100 (train_1.txt, train_10.txt, train_list.txt)",
    "labels_from": "with --split-lists: use the lists' labels (list) or the dataset's (dataset)",
    "layer_decay": "layer-wise lr decay, e.g. 0.65: head at --lr, block i at lr * decay^(L - i) (ViTs; default: none)",
    "group_columns": "csv/imagefolder: metadata columns that become subgroups, e.g. sex,age (default: none)",
    "age_bins": "age bin edges in years for the age subgroups (default: 40,60,80: <40, 40-59, 60-79, 80+)",
    "min_group_size": "a subgroup with fewer images is listed as too small, not scored",
    "bootstrap_resamples": "resamples of the test headline's bootstrap 95%% interval (0: none)",
    "select_on": "validation score that selects the epoch: headline, or worst_group (FairTune's worst subgroup)",
    "fraction": "share of the training split to train on (data-efficiency runs)",
    "val_frac": "validation share of the images (selects the epoch; default: the dataset's, which reproduces the paper's n_train)",
    "test_frac": "test share of the images (default: the dataset's; ignored where the dataset has an official test list)",
    "split_seed": "seed of the one train/val/test split that every training seed shares",
    "resplit_per_seed": "draw a new split for each training seed instead (the split seed is then the training seed)",
    "cache_dir": "decoded-image cache folder (default: $MEDPEFT_CACHE_DIR/images, else ~/.cache/medpeft/images)",
    "num_workers": "DataLoader worker processes (0: load in the main process; default: min(8, CPUs - 1))",
    "cache_features": "linear_probe: train the head on cached frozen-backbone features",
    "skip_bad_images": "drop images that cannot be decoded (listed in the results' data notes) instead of stopping",
    "seeds": "seeds to run, one run each (results give mean +- std)",
    "epochs": "maximum training epochs",
    "patience": "early stopping: epochs without a better validation score",
    "batch_size": "images per step (per process under torchrun)",
    "lr": "peak learning rate (AdamW, warm-up then cosine decay)",
    "optimizer": "adamw, or loraplus (LoRA+: peft's create_loraplus_optimizer, LoRA's B at lr * ratio; lora/dora)",
    "loraplus_lr_ratio": "LoRA+: learning-rate ratio of the B matrices to the A matrices",
    "weight_decay": "AdamW weight decay (weight matrices only; biases and norms get none)",
    "warmup_epochs": "linear learning-rate warm-up in epochs (fractions allowed)",
    "label_smoothing": "cross-entropy label smoothing (single-label tasks)",
    "grad_clip": "clip the gradient norm to this (0: no clipping)",
    "mixed_precision": "autocast precision: auto (bf16 on GPUs that support it, else fp16 with a grad scaler; "
                       "fp32 on CPU), no, bf16 or fp16 (trainable parameters stay fp32)",
    "compile": "torch.compile the model (slower start, faster steps on a GPU)",
    "grad_checkpointing": "gradient checkpointing: recompute activations in backward (less memory, ~30%% slower)",
    "max_steps_per_epoch": "cap on steps per epoch for quick runs (default: no cap)",
    "base_model": "generation: Stable Diffusion pipeline, a Hub id or a local save_pretrained folder (required)",
    "resolution": "generation: image size in pixels (a multiple of 8)",
    "max_train_steps": "generation: training steps",
    "validation_steps": "generation: write validation images every N steps (0: only at the end)",
    "validation_prompts": "generation: prompts of the validation images (default: reports of the test split)",
    "gradient_checkpointing": "generation: recompute U-Net activations to save memory",
    "ema": "generation: keep an exponential moving average of the trained weights",
    "num_inference_steps": "generation: sampling steps of validation and FID images",
    "guidance_scale": "generation: classifier-free guidance scale",
    "fid_samples": "generation: images generated for FID at the end (0: no FID)",
    "output_dir": f"run folder (default: {RUNS_DIR}/<method>-<dataset>-<date>-<time>)",
    "resume": "continue the interrupted run in --output-dir from its last checkpoint (the epoch budget may grow)",
    "overwrite": "replace the run already in --output-dir",
    "keep_checkpoints": "keep each seed's resume checkpoint and best-epoch copy once the run is finished "
                        "(default: removed; adapter/ keeps the tensors)",
    "push_to_hub": "push the best adapter to this Hub repo (org/name) at the end (default: no push)",
    "hub_private": "make the pushed Hub repo private",
}


USAGE = "python -m trainer --method METHOD --dataset DATASET --data-dir DIR [options] (all options: --help)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one-line ConfigErrors (the caller prints ``error: ...``)."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments"):
            known = [s for a in self._actions for s in a.option_strings]
            words = [w.split("=")[0] for w in message.partition(": ")[2].split() if w.startswith("--")]
            close = [c[0] for w in words if (c := difflib.get_close_matches(w, known, 1))]
            if close:
                message += f" (did you mean {', '.join(close)}?)"
        raise ConfigError(f"{message} (see --help)")


def _default_text(name: str) -> str:
    f = FIELDS[name]
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if value is None or value == [] or value == {}:
        return ""
    if isinstance(value, bool):
        value = "on" if value else "off"
    elif isinstance(value, list):
        value = " ".join(map(str, value))
    return f" (default: {value})"


def help_for(name: str) -> str:
    """One line of help for option ``name``, with its real default."""
    text = HELP.get(name, name.replace("_", " "))
    if "{" in text:
        text = text.format(methods=", ".join(sorted(METHODS)), datasets=", ".join(dataset_names("classification")),
                           gen_datasets=", ".join(dataset_names("generation")))
    return text if "default:" in text else text + _default_text(name)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _arg_type(name: str):
    kind = str(FIELDS[name].type).split("|")[0].strip()
    return {"int": int, "float": float}.get(kind, str)


def _metavar(name: str) -> str:
    if name in CHOICES:
        return "{" + ",".join(CHOICES[name]) + "}"
    special = {"age_bins": "EDGES", "group_columns": "COLUMNS", "init_checkpoint": "PATH", "split_lists": "DIR"}
    if name in special:
        return special[name]
    kind = _arg_type(name)
    return "N" if kind is int else "X" if kind is float else "DIR" if name.endswith("_dir") else "NAME"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m trainer", usage=USAGE, description=(
        "Fine-tune a timm backbone (or the Stable Diffusion U-Net) with a PEFT method, select on validation, "
        "test, save the adapter and optionally push it to the Hugging Face Hub."),
        epilog="Example: python -m trainer --method lora --dataset ham10000 --data-dir /data/ham10000")
    p.add_argument("--config", metavar="YAML", help="YAML file of option: value defaults (flags override)")
    p.add_argument("--seed", type=int, help="a single seed (same as --seeds N)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=None,
                   help="random backbone weights instead of pretrained ones (tests; needs no network)")
    p.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                   help="a method hyper-parameter (repeatable), e.g. --hp rank=16")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset loader option (repeatable), e.g. --dataset-option task=nine_partition_label")
    for name, f in FIELDS.items():
        if name in ("pretrained", "hparams", "dataset_options"):
            continue
        # default None = not given on the command line (YAML / dataclass default applies)
        if str(f.type) == "bool":
            p.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None,
                           help=help_for(name))
        elif name in ("seeds", "validation_prompts"):
            p.add_argument(flag(name), dest=name, nargs="+", default=None, type=int if name == "seeds" else str,
                           help=help_for(name), metavar="N" if name == "seeds" else "PROMPT")
        else:
            p.add_argument(flag(name), dest=name, type=_arg_type(name), default=None, help=help_for(name),
                           metavar=_metavar(name))
    group = p.add_argument_group("method hyper-parameters (only the chosen method's are used)")
    for m in sorted(METHODS.values(), key=lambda m: m.name):
        for key, value in m.defaults.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            group.add_argument(flag(f"{m.name}_{key}"), dest=f"hp__{m.name}__{key}", default=None,
                               type=type(value) if numeric else _parse_value,
                               metavar="JSON" if value is None else type(value).__name__.upper(),
                               help=f"{m.name}: {key.replace('_', ' ')} (default: "
                                    f"{'set by the run' if value is None or key == 'total_step' else repr(value)})")
    return p


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """A validated TrainConfig from a command line (``--config`` YAML, then flags)."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = load_yaml(args.config) if args.config else {}
    cli = vars(args)
    for name in FIELDS:
        if cli.get(name) is not None:
            values[name] = cli[name]
    if args.seed is not None:
        if args.seeds is not None:
            raise ConfigError("give --seed or --seeds, not both")
        values["seeds"] = [args.seed]
    hparams = values.get("hparams") or {}
    if not isinstance(hparams, dict):
        raise ConfigError(f"hparams must be a mapping of key: value, got {hparams!r}")
    hparams = dict(hparams)
    method = values.get("method", TrainConfig.method)
    for key, value in cli.items():
        if key.startswith("hp__") and value is not None:
            _, m, hp = key.split("__", 2)
            if m != method:
                raise ConfigError(f"{flag(m + '_' + hp)} is a hyper-parameter of {m!r}, but the method is {method!r}")
            hparams[hp] = value
    values["hparams"] = {**hparams, **key_values(args.hp, "--hp")}
    options = values.get("dataset_options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"dataset_options must be a mapping of key: value, got {options!r}")
    values["dataset_options"] = {**options, **key_values(args.dataset_option, "--dataset-option")}
    return TrainConfig(**values).validate()


def key_values(items: list[str], flag_name: str) -> dict[str, Any]:
    """``["rank=16", "alpha=8"]`` -> ``{"rank": 16, "alpha": 8}`` (values read as JSON where they parse)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag_name} takes KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(value)
    return out
