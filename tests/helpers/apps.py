"""Tiny adapters saved with the adapters API, a real fundus image, and the app on a free local port."""
from __future__ import annotations

import socket
from pathlib import Path

import torch
from PIL import Image

from adapters import apply_method, create_backbone, data_config
from adapters.backbones import TINY_CNN
from adapters.io import AdapterConfig, save_adapter

CLASSES = ["benign", "malignant", "normal"]


def make_adapter(folder: Path, backbone: str = TINY_CNN, method: str = "bitfit", classes=CLASSES,
                 task: str = "classification", dataset: str = "breastus-tiny", seed: int = 0,
                 f1: float = 0.5) -> Path:
    """A tiny adapter saved with the adapters API (trainable tensors nudged so it is not the init)."""
    torch.manual_seed(seed)
    model = apply_method(create_backbone(backbone, len(classes), pretrained=False), method)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    cfg = AdapterConfig(method=method, backbone=backbone, num_classes=len(classes), class_names=list(classes),
                        task=task, data_config=data_config(model), dataset=dataset, metrics={"test_f1_macro": f1})
    return save_adapter(model, folder, cfg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(demo) -> str:
    import app

    port = free_port()
    app.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/"


def retina_png(path: Path, size: int = 256) -> Path:
    from skimage import data

    Image.fromarray(data.retina()).resize((size, size), Image.BICUBIC).save(path)
    return path
