"""MedPEFT adapters: parameter-efficient fine-tuning methods for timm classifiers and the
Stable Diffusion U-Net, one registry, one adapter-folder format.

    model = create_backbone("resnet50", num_classes=3)
    model = apply_method(model, "ssf")
    ... train ...
    save_adapter(model, "out/ssf", AdapterConfig(...))
    model, cfg = load_adapter("out/ssf")
"""
from .backbones import OFFLINE_LITE0, BackboneError, create_backbone, data_config
from .core import MethodError, NotMergeable, count_params, family_of, head_name, trainable_names, unwrap
from .registry import METHODS, Method, apply_method, get_method, merge_method, methods_for, register

# Importing the method modules registers them.
from . import selective  # noqa: E402,F401
from . import ssf  # noqa: E402,F401
from . import tsa  # noqa: E402,F401
from . import lora  # noqa: E402,F401
from . import layernorm  # noqa: E402,F401
from . import adaptformer  # noqa: E402,F401
from . import vpt  # noqa: E402,F401
from . import unet  # noqa: E402,F401
from . import svdiff  # noqa: E402,F401
from . import difffit  # noqa: E402,F401
from . import unet_lora  # noqa: E402,F401

__all__ = ["OFFLINE_LITE0", "BackboneError", "create_backbone", "data_config", "MethodError", "NotMergeable",
           "count_params", "family_of", "head_name", "trainable_names", "unwrap", "METHODS", "Method",
           "apply_method", "get_method", "merge_method", "methods_for", "register"]
