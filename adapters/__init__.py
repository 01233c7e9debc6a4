"""MedPEFT adapters: parameter-efficient fine-tuning methods for timm classifiers and the
Stable Diffusion U-Net, one registry, one adapter-folder format.

    model = create_backbone("resnet50", num_classes=3)
    model = apply_method(model, "ssf")
    ... train ...
    save_adapter(model, "out/ssf", AdapterConfig(...))
    model, cfg = load_adapter("out/ssf")

The core: registry.py (name -> Method), core.py (freezing and selection, errors, file helpers),
io.py (the adapter folder), backbones.py (timm models), checkpoints.py (foundation initialisations).
The methods live in adapters/methods/, one file each. Import order, no cycles:
core <- registry <- methods; core <- checkpoints <- backbones <- io.
"""
from .backbones import OFFLINE_LITE0, BackboneError, create_backbone, data_config
from .core import MethodError, NotMergeable, count_params, family_of, head_name, trainable_names, unwrap
from .registry import METHODS, Method, apply_method, get_method, merge_method, methods_for, register

# Importing the method package registers every method (adapters/methods/: one file per method).
from . import methods  # noqa: E402,F401
from . import peft_tuners  # noqa: E402,F401  (every peft tuner through one table)

__all__ = ["OFFLINE_LITE0", "BackboneError", "create_backbone", "data_config", "MethodError", "NotMergeable",
           "count_params", "family_of", "head_name", "trainable_names", "unwrap", "METHODS", "Method",
           "apply_method", "get_method", "merge_method", "methods_for", "register"]
