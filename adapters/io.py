"""The adapter folder: what the trainer writes, the Hub holds and the app loads.

```
medpeft.json               method + hyper-parameters, backbone, classes, preprocessing, metrics, versions
adapter_model.safetensors  the trainable tensors only (head included), + BN statistics where trained
adapter_config.json        peft's own config, for peft methods (LoRA, DoRA, LN tuning): the folder
                           then also loads with plain ``peft.PeftModel.from_pretrained(base, folder)``
README.md                  model card
```
Only safetensors and JSON are read: nothing in an adapter folder can run code.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .core import MethodError, count_params, save_tensors, temp_file_beside, umask  # noqa: F401 (re-exported)
from .registry import apply_method, get_method

CONFIG_NAME = "medpeft.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1

PAPER_CITATION = """@inproceedings{dutt2024parameter,
  title={Parameter-Efficient Fine-Tuning for Medical Image Analysis: The Missed Opportunity},
  author={Dutt, Raman and Ericsson, Linus and Sanchez, Pedro and Tsaftaris, Sotirios A and Hospedales, Timothy},
  booktitle={Medical Imaging with Deep Learning (MIDL)},
  year={2024}
}"""


@dataclass
class AdapterConfig:
    """Everything needed to rebuild base + method and to preprocess inputs exactly as in training."""

    method: str
    backbone: str
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    hparams: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"  # classification | multilabel | generation
    data_config: dict[str, Any] | None = None  # timm eval preprocessing (input_size, mean, std, ...)
    img_size: int | None = None  # a ViT built at a non-default resolution
    pretrained: bool = True  # the backbone started from its pretrained weights (False: random, --no-pretrained)
    # Foundation checkpoint the backbone was initialised from (path, hf-hub:org/name/file or org/name; see
    # adapters.checkpoints) and what loading it did; the ViT pooling the model was built with (None: timm's).
    init_checkpoint: str | None = None
    init_report: dict[str, Any] | None = None
    global_pool: str | None = None
    fc_norm: bool | None = None
    grayscale: str = "replicate"  # how 1-channel images become 3 channels
    dataset: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    # Temperature scaling fitted on the validation split (one T, or one per label for multi-label):
    # calibrated probabilities are softmax/sigmoid(logits / T). None: not calibrated. ``calibration``:
    # ECE / Brier / NLL before and after, the test interval and subgroup scores (the model card's).
    temperature: float | list[float] | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    trainable_params: int | None = None
    total_params: int | None = None
    training: dict[str, Any] = field(default_factory=dict)  # seed, split, epochs, lr ... (informational)
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AdapterConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MethodError(f"{CONFIG_NAME}: unknown field(s) {unknown}")
        missing = [k for k in ("method", "backbone", "num_classes") if k not in d]
        if missing:
            raise MethodError(f"{CONFIG_NAME}: missing field(s) {missing}")
        cfg = cls(**d)
        if cfg.format_version > FORMAT_VERSION:
            raise MethodError(f"{CONFIG_NAME} has format_version {cfg.format_version}; this MedPEFT reads "
                              f"up to {FORMAT_VERSION}: upgrade medpeft")
        if not isinstance(cfg.num_classes, int) or cfg.num_classes < 0:
            raise MethodError(f"{CONFIG_NAME}: num_classes must be a non-negative integer, got {cfg.num_classes!r}")
        if cfg.class_names and len(cfg.class_names) != cfg.num_classes:
            raise MethodError(f"{CONFIG_NAME}: {len(cfg.class_names)} class_names for num_classes={cfg.num_classes}")
        get_method(cfg.method)  # unknown method -> clear error
        return cfg


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "timm", "peft", "diffusers", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter file holds: trainable parameters (+ buffers the method trains)."""
    method = get_method(model.medpeft_method)
    if is_peft(model):
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
    else:
        state = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if method.saved_buffers is not None:
        buffers = dict(model.named_buffers())
        state.update({n: buffers[n] for n in method.saved_buffers(model)})
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _atomic_write(path: Path, write) -> None:
    fd, tmp = temp_file_beside(path)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_adapter(model: nn.Module, folder: str | os.PathLike, config: AdapterConfig,
                 card: str | None = None) -> Path:
    """Write the adapter folder (each file atomically). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    method = getattr(model, "medpeft_method", None)
    if method != config.method:
        raise MethodError(f"model carries method {method!r} but the config says {config.method!r}")
    config.hparams = dict(model.medpeft_hparams)
    config.trainable_params, config.total_params = count_params(model)
    config.versions = config.versions or library_versions()
    state = adapter_state_dict(model)
    meta = {"format": "pt", "medpeft_method": config.method, "backbone": config.backbone}
    _atomic_write(folder / WEIGHTS_NAME, lambda p: save_tensors(state, p, metadata=meta))
    if is_peft(model):
        model.peft_config["default"].save_pretrained(str(folder))  # adapter_config.json
    if get_method(config.method).export is not None:  # extra formats (diffusers LoRA file)
        get_method(config.method).export(model, folder)
    _atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(config.to_json()))
    _atomic_write(folder / "README.md", lambda p: Path(p).write_text(card or model_card(config)))
    return folder


def read_config(folder: str | os.PathLike) -> AdapterConfig:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise MethodError(f"{folder} is not a MedPEFT adapter folder: {CONFIG_NAME} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MethodError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise MethodError(f"{path} must hold a JSON object")
    return AdapterConfig.from_dict(data)


def load_adapter_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load an adapter file into a model the method was just applied to; all or nothing."""
    path = Path(path)
    if not path.is_file():
        raise MethodError(f"adapter weights not found: {path}")
    state = load_file(str(path))
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise MethodError(f"{path.name} does not match method {model.medpeft_method!r} on this backbone: "
                          f"{len(missing)} tensor(s) missing {missing[:3]}, {len(extra)} unexpected {extra[:3]}")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        k, got, want = wrong[0]
        raise MethodError(f"{path.name}: {len(wrong)} tensor(s) of the wrong shape, e.g. {k} is {got}, "
                          f"the model expects {want} (another backbone or class count?)")
    if is_peft(model):
        from peft import set_peft_model_state_dict

        buffers = set(dict(model.named_buffers())) & set(state)  # the method's saved buffers (LoRA's A0/B0)
        if buffers:
            model.load_state_dict({k: state.pop(k) for k in buffers}, strict=False)
        set_peft_model_state_dict(model, state)
    else:
        result = model.load_state_dict(state, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys


def scale_logits(logits: torch.Tensor, temperature) -> torch.Tensor:
    """logits / T: the calibrated logits of an adapter with ``temperature`` (None leaves them as they are)."""
    if temperature is None:
        return logits
    t = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
    return logits / t


def calibrate_outputs(model: nn.Module, temperature) -> nn.Module:
    """Make ``model`` return calibrated logits (divided by its temperature) with a forward hook;
    ``model.medpeft_temperature`` records it. The argmax (and the sign of each logit) is unchanged."""
    if temperature is not None and getattr(model, "medpeft_temperature", None) is None:
        model.register_forward_hook(lambda module, args, output: scale_logits(output, temperature))
        model.medpeft_temperature = temperature
    return model


def load_adapter(folder: str | os.PathLike, model: nn.Module | None = None, pretrained: bool | None = None,
                 init_checkpoint: str | None = None, calibrated: bool = True) -> tuple[nn.Module, AdapterConfig]:
    """Rebuild base + method from ``folder`` and restore its tensors.

    ``calibrated``: where the config has a temperature (fitted on the validation split at training),
    the model returns logits / T, so softmax / sigmoid give calibrated probabilities (argmax unchanged);
    False returns the raw logits. (A merged copy, e.g. peft's merge_and_unload, is a new module: pass
    it through :func:`calibrate_outputs` again.)

    ``model``: a base model to apply the adapter to (e.g. a U-Net from a pipeline, or a cached
    backbone); by default the backbone is created from the config: pretrained weights when the adapter
    was trained from them (``pretrained`` overrides; an adapter trained from random weights never touches
    the Hub), the config's foundation checkpoint where it names one, or ``init_checkpoint`` where that
    file now lives.
    """
    folder = Path(folder)
    config = read_config(folder)
    if model is None:
        from .backbones import create_backbone
        from .checkpoints import CheckpointError

        source = init_checkpoint or config.init_checkpoint
        try:
            use_pretrained = config.pretrained if pretrained is None else pretrained
            model = create_backbone(config.backbone, config.num_classes, pretrained=use_pretrained,
                                    img_size=config.img_size, init_checkpoint=source,
                                    global_pool=config.global_pool, fc_norm=config.fc_norm)
        except CheckpointError as e:
            raise MethodError(f"{folder.name}: the backbone was initialised from the foundation checkpoint "
                              f"{source}, needed to rebuild it: {e} (pass init_checkpoint= where the file "
                              f"is now)") from None
    from .methods.lora_init import loading

    with loading():  # inits that read data or change base weights are rebuilt from the file's tensors
        model = apply_method(model, config.method, **config.hparams)
    load_adapter_weights(model, folder / WEIGHTS_NAME)
    if get_method(config.method).after_load is not None:
        get_method(config.method).after_load(model)
    model.eval()
    if calibrated and config.task != "generation":
        calibrate_outputs(model, config.temperature)
    return model, config


def peft_snippet(config: AdapterConfig, folder: str = "path/or/downloaded/folder") -> str | None:
    """Runnable code that loads a peft-format adapter with plain timm + peft (None for methods that
    are not peft's, or backbones timm cannot create by name with these weights)."""
    from .foundation import find_preset

    if not get_method(config.method).peft or config.task == "generation" or config.init_checkpoint \
            or find_preset(config.backbone):  # a converted foundation model is not a plain timm name
        return None
    from .backbones import OFFLINE_LITE0

    lines = ["import timm", "from peft import PeftModel", ""]
    if config.backbone == OFFLINE_LITE0:  # registered by MedPEFT (weights from a pip package)
        lines = ["import adapters  # registers the offline EfficientNet-Lite0 weights", *lines]
        make = f"adapters.create_backbone({config.backbone!r}, num_classes={config.num_classes})"
    else:
        kw = f", img_size={config.img_size}" if config.img_size else ""
        make = (f"timm.create_model({config.backbone!r}, pretrained={bool(config.pretrained)}, "
                f"num_classes={config.num_classes}{kw})")
    lines.append(f"base = {make}")
    from .backbones import backbone_family
    from .registry import resolve_hparams

    targets = resolve_hparams(get_method(config.method), dict(config.hparams or {})).get("targets")
    if targets == "auto":  # LoRA/DoRA's default: q and v on ViTs
        targets = "qv" if backbone_family(config.backbone) == "vit" else "conv"
    if targets == "qv":
        lines = ["from adapters.methods.lora import split_qkv  # LoRA on q and v: timm's fused qkv split first", *lines]
        lines.append("base = split_qkv(base)")
    lines.append(f"model = PeftModel.from_pretrained(base, {folder!r}).eval()")
    return "\n".join(lines)


def model_card(config: AdapterConfig) -> str:
    """A Hugging Face model card with model-index eval results."""
    method = get_method(config.method)
    tags = ["medpeft", "medical-imaging", "peft", config.method, config.task]
    lines = ["---", "library_name: " + ("peft" if method.peft else "timm"), "tags:"]
    lines += [f"- {t}" for t in tags]
    from .foundation import card_lines, find_preset

    preset = find_preset(config.backbone)
    if preset is not None:
        if preset.hub_id:
            lines.append(f"base_model: {preset.hub_id}")
    elif config.backbone:
        base = config.backbone if "/" in config.backbone else f"timm/{config.backbone}"
        lines.append(f"base_model: {base}")
    if config.dataset:
        lines.append(f"datasets:\n- {config.dataset}")
    scalar = {k: v for k, v in config.metrics.items() if isinstance(v, (int, float))}
    if scalar:
        lines += ["model-index:", f"- name: medpeft-{config.method}-{config.dataset or 'custom'}", "  results:",
                  "  - task:", "      type: image-classification" if config.task != "generation"
                  else "      type: text-to-image", "    dataset:", f"      name: {config.dataset or 'custom'}",
                  f"      type: {config.dataset or 'custom'}", "    metrics:"]
        for k, v in scalar.items():
            lines += [f"    - type: {k}", f"      value: {v:.4f}" if isinstance(v, float) else f"      value: {v}"]
    lines.append("---")
    pct = ""
    if config.trainable_params and config.total_params:
        pct = f" ({config.trainable_params:,} of {config.total_params:,}, " \
              f"{100 * config.trainable_params / config.total_params:.3f}%)"
    body = [
        f"# {config.method} adapter for {config.backbone}" + (f" on {config.dataset}" if config.dataset else ""),
        "",
        f"Parameter-efficient fine-tuning with **{config.method}** ({method.summary}; {method.paper}).",
        f"Trainable parameters{pct or ': n/a'}.",
        "",
        f"- task: {config.task}; classes: {', '.join(config.class_names) or config.num_classes}",
        f"- hyper-parameters: `{json.dumps(config.hparams, sort_keys=True)}`",
    ]
    from .peft_tuners import config_type

    if config_type(config.method):
        body.append(f"- peft tuner: `peft.{config_type(config.method)}` (a stock peft adapter folder)")
    if config.training.get("optimizer"):
        body.append(f"- optimizer: {config.training['optimizer']}" + (
            f" (LoRA+, B at lr x {config.training['loraplus_lr_ratio']:g})"
            if config.training.get("optimizer") == "loraplus" else ""))
    if config.init_checkpoint:
        report = config.init_report or {}
        body.append(f"- backbone initialised from the foundation checkpoint `{config.init_checkpoint}`"
                    + (f" ({report.get('loaded')} tensors; missing {report.get('missing')}, unexpected "
                       f"{report.get('unexpected')})" if report else ""))
    body += card_lines(config.backbone)  # a foundation preset: its licence, non-commercial, gated
    if config.global_pool is not None:
        body.append(f"- pooling: global_pool={config.global_pool}, fc_norm={config.fc_norm}")
    if config.data_config:
        body.append(f"- preprocessing: mean {config.data_config.get('mean')}, std {config.data_config.get('std')}, "
                    f"input {config.data_config.get('input_size')}, grayscale {config.grayscale}")
    if config.training:
        body.append(f"- training: `{json.dumps(config.training, sort_keys=True, default=str)}`")
    if config.metrics:
        body += ["", "| metric | value |", "| --- | --- |"]
        body += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in config.metrics.items()]
    body += ["", "## Use", "", "```python", "from adapters.io import load_adapter",
             "model, config = load_adapter('path/or/downloaded/folder')", "```"]
    snippet = peft_snippet(config)
    if snippet:
        body += ["", "Or with plain peft and timm:", "", "```python", snippet, "```"]
    body += ["", "Not a medical device: research use only.", "", "## Citation", "", "```bibtex", PAPER_CITATION,
             "```", ""]
    return "\n".join(lines) + "\n" + "\n".join(body)
