"""Per-method HPO dimensions of the catalogue (what :func:`trainer.study.hpo.search_space` adds for a
method, on top of lr / weight decay and the generic ``SEARCH_SPACE`` names): the ranges the methods'
papers and official configs search (OSU ViT_PEFT_Vision's grids for the adapters, FacT and Convpass
scales; peft's documented ranges for its tuners). A name searched here overrides the generic one.
"""
from __future__ import annotations

from typing import Any, Iterable

_R = ("cat", [4, 8, 16, 32])
_SCALE = ("log", (0.01, 100.0))  # OSU / official per-dataset scale grids
METHOD_SPACE: dict[str, dict[str, tuple[str, Any]]] = {
    "lora": {"rank": _R, "alpha": _R, "rslora": ("cat", [False, True]), "init": ("cat", ["default", "gaussian"])},
    "dora": {"rank": _R, "alpha": _R, "rslora": ("cat", [False, True])},
    "loha": {"r": _R, "alpha": _R}, "lokr": {"r": _R, "alpha": _R},
    "hra": {"r": ("cat", [4, 8, 16])}, "hira": {"r": ("cat", [8, 16, 32, 64])},
    "delora": {"r": ("cat", [4, 8, 16]), "delora_lambda": ("cat", [5, 15, 30])},
    "adalora": {"target_r": ("cat", [4, 8, 16]), "init_r": ("cat", [12, 16, 24])},
    "oft": {"oft_block_size": ("cat", [8, 16, 32])}, "boft": {"boft_block_size": ("cat", [2, 4, 8])},
    "vera": {"r": ("cat", [128, 256, 512])},
    "fourierft": {"n_frequency": ("cat", [500, 1000, 3000]), "scaling": ("cat", [100.0, 150.0, 300.0])},
    "vblora": {"r": ("cat", [2, 4, 8])}, "randlora": {"r": ("cat", [16, 32, 64])},
    "shira": {"r": ("cat", [16, 32, 64])}, "miss": {"r": ("cat", [16, 32, 64])},
    "c3a": {"block_size": ("cat", [64, 128, 256])},
    "adapter_houlsby": {"bottleneck": ("cat", [4, 8, 16, 32]), "scale": _SCALE},
    "adapter_pfeiffer": {"bottleneck": ("cat", [4, 8, 16, 32, 64]), "scale": _SCALE},
    "convpass": {"bottleneck": ("cat", [8, 16]), "scale": _SCALE, "xavier_init": ("cat", [False, True])},
    "repadapter": {"bottleneck": ("cat", [8, 16, 32]), "scale": ("log", (0.1, 10.0))},
    "fact_tt": {"rank": ("cat", [8, 16, 32]), "scale": _SCALE},
    "fact_tk": {"rank": ("cat", [16, 32, 64]), "scale": _SCALE},
    "mona": {"bottleneck": ("cat", [32, 64, 128])},
    "prefix_tuning": {"num_prefix": ("cat", [5, 10, 20, 50])},
    "conv_adapter": {"reduction": ("cat", [2, 4, 8])},
}


def method_space(method: str, hparams: Iterable[str]) -> dict[str, tuple[str, Any]]:
    """The method's own searched hyper-parameters (only those it has)."""
    names = set(hparams)
    return {k: v for k, v in METHOD_SPACE.get(method, {}).items() if k in names}
