"""Linear probing on cached frozen features.

``linear_probe`` trains the classifier head of a frozen backbone. Running the backbone on every
image every epoch is wasted work: its pooled features never change. Here the backbone runs ONCE
per split, on the eval transform (no augmentation), and the features are cached on disk::

    <image cache dir>/features/<backbone>-<split>-<key>.safetensors    {"features": [n, D] f32, "rows": [n]}

keyed by a hash of: the backbone name, pretrained flag and a fingerprint of its frozen weights
(random-init backbones differ per seed), the data config (eval preprocessing), the image cache
file, the split's row indices and the mixed-precision mode. Every later epoch, seed with the same
split, or HPO trial (they share ``cache_dir``) reuses them.

The training loop then trains :class:`HeadOnly` - a view that holds the model's *own* head module
(the same ``nn.Parameter`` objects) - on the features, so the adapter it saves is an ordinary
``linear_probe`` adapter folder (head tensors under the model's names) that reloads with
``load_adapter`` and gives the same logits on images.

timm's contract used here: ``model(x) == head(forward_head(forward_features(x), pre_logits=True))``
in eval mode, with ``head = model.get_classifier()``. :func:`head_splits` checks it on a random input
for the backbone at hand; where it does not hold (e.g. distilled DeiT's two heads), the trainer
falls back to training on images.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from adapters import unwrap

from .precision import loader_options

FEATURES_VERSION = 1


class HeadOnly(nn.Module):
    """``forward(features) = head(dropout(features))`` with the model's own head module.

    The full model is kept as a plain attribute (``full_model``), not a submodule: moving or
    wrapping the view (``accelerator.prepare``) touches only the head.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        base = unwrap(model)
        head = base.get_classifier()
        if not isinstance(head, nn.Module) or isinstance(head, nn.Identity):
            raise ValueError(f"{type(base).__name__} has no single classifier module to train on features")
        self.head = head
        # timm applies ``drop_rate`` dropout between pre-logits and the classifier in train mode.
        self.drop = nn.Dropout(float(getattr(base, "drop_rate", 0.0) or 0.0))
        object.__setattr__(self, "full_model", model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(features))


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm pre-logits features: ``forward_head(forward_features(x), pre_logits=True)``."""
    base = unwrap(model)
    return base.forward_head(base.forward_features(x), pre_logits=True)


@torch.no_grad()
def head_splits(model: nn.Module, input_size, device="cpu", tol: float = 1e-4) -> bool:
    """True if ``model(x) == head(pooled_features(x))`` (eval mode) on a random batch of 2."""
    base = unwrap(model)
    if not (hasattr(base, "get_classifier") and hasattr(base, "forward_head") and hasattr(base, "forward_features")):
        return False
    head = base.get_classifier()
    if not isinstance(head, nn.Module) or isinstance(head, nn.Identity):
        return False
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
        full = model(x)
        split = head(pooled_features(model, x))
        ok = full.shape == split.shape and torch.allclose(full, split, rtol=tol, atol=tol * full.abs().max().item())
    except Exception:  # noqa: BLE001 - any mismatch in the contract means: don't split
        ok = False
    finally:
        model.train(was_training)
    return bool(ok)


def weights_fingerprint(model: nn.Module) -> str:
    """Fingerprint of every frozen backbone tensor (parameters and buffers; the head excluded): name,
    shape, dtype, float64 sum and absolute sum, and up to 4096 evenly spaced elements. Cheap (a
    reduction per tensor, ~0.1 s for a ViT-B) and different for any two different initialisations or
    checkpoints in practice."""
    from adapters import head_name

    base = unwrap(model)
    skip = head_name(base)
    h = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, t in sorted(base.state_dict().items()):
            if skip and (name == skip or name.startswith(skip + ".")):
                continue
            t = t.detach().reshape(-1)
            h.update(f"{name}|{t.dtype}|{t.numel()};".encode())
            if not t.numel():
                continue
            if t.is_floating_point() or t.is_complex():
                sums = torch.stack([t.sum(dtype=torch.float64), torch.linalg.vector_norm(t, 1, dtype=torch.float64)])
                h.update(sums.cpu().numpy().tobytes())
            sample = t[:: max(1, t.numel() // 4096)].cpu().contiguous()
            h.update(sample.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def feature_key(backbone: str, pretrained: bool, fingerprint: str, dcfg: dict, image_cache: str,
                rows: np.ndarray, precision: str) -> str:
    rows = np.ascontiguousarray(np.asarray(rows, dtype=np.int64))
    blob = json.dumps({"v": FEATURES_VERSION, "backbone": backbone, "pretrained": bool(pretrained),
                       "weights": fingerprint, "data_config": dcfg, "image_cache": image_cache,
                       "rows": hashlib.sha256(rows.tobytes()).hexdigest(), "n": int(len(rows)),
                       "precision": precision}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def feature_path(folder: Path, backbone: str, split: str, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone)
    return Path(folder) / f"{safe}-{split}-{key}.safetensors"


@torch.no_grad()
def extract(model: nn.Module, batches: Iterable, device, autocast: Callable = contextlib.nullcontext,
            desc: str | None = None) -> torch.Tensor:
    """Pooled features of every batch ``(x, _)``, float32 on the CPU, in order (a progress bar when
    ``desc`` is given)."""
    from tqdm.auto import tqdm

    model.eval()
    out = []
    for x, *_ in tqdm(batches, desc=desc, disable=desc is None, leave=False, dynamic_ncols=True):
        with autocast():
            f = pooled_features(model, x.to(device, non_blocking=True))
        out.append(f.float().cpu())
    if not out:  # an empty split
        base = unwrap(model)
        return torch.empty(0, getattr(base, "head_hidden_size", None) or base.num_features)
    return torch.cat(out)


def load_features(path: Path, rows: np.ndarray) -> torch.Tensor | None:
    from safetensors.torch import load_file

    try:
        data = load_file(str(path))
    except Exception:  # noqa: BLE001 - unreadable: recompute
        return None
    if "features" not in data or not torch.equal(data.get("rows", torch.empty(0)),
                                                 torch.as_tensor(np.asarray(rows, dtype=np.int64))):
        return None
    return data["features"]


def save_features(path: Path, features: torch.Tensor, rows: np.ndarray, meta: dict) -> None:
    """Atomic: a finished file is a complete one."""
    from adapters.io import save_tensors

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_tensors({"features": features.contiguous(), "rows": torch.as_tensor(np.asarray(rows, dtype=np.int64))},
                  str(tmp), metadata={k: str(v) for k, v in meta.items()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def split_features(cfg, model: nn.Module, index, cache, dcfg: dict, splits: dict, device,
                   autocast: Callable = contextlib.nullcontext, log: Callable = print,
                   precision: str | None = None) -> dict[str, torch.Tensor] | None:
    """{split: features [n, D]} for every split, from the on-disk cache or computed (and cached) now;
    ``None`` where the model's head cannot be split off (see :func:`head_splits`). ``precision``: the
    precision the features are computed in (the accelerator's, resolved from ``--mixed-precision auto``)."""
    from torch.utils.data import DataLoader

    from ..data import CachedImageDataset, build_transforms

    cache_path = Path(cache.path)
    folder = cache_path.parent / "features"
    fingerprint = weights_fingerprint(model)
    eval_tf = build_transforms(dcfg, train=False)
    backbone = cfg.resolved_backbone()
    out, todo = {}, {}
    for split, rows in splits.items():
        key = feature_key(backbone, cfg.pretrained, fingerprint, dcfg, cache_path.name, rows,
                          precision or cfg.mixed_precision)
        path = feature_path(folder, backbone, split, key)
        feats = load_features(path, rows) if path.is_file() else None
        if feats is None:
            todo[split] = (rows, path, key)
        else:
            out[split] = feats
    if todo:
        # The cached path relies on model(x) == head(pooled_features(x)); check it before computing.
        if not head_splits(model, dcfg["input_size"]):
            return None
        on_device = model.to(device)
        t0 = time.time()
        for split, (rows, path, key) in todo.items():
            ds = CachedImageDataset(cache, index.labels, rows, eval_tf)
            loading = loader_options(cfg, torch.device(device).type)  # workers; pinned memory on CUDA
            dl = DataLoader(ds, batch_size=cfg.batch_size * 2, shuffle=False, **loading)
            feats = extract(on_device, dl, device, autocast, desc=f"features ({split})")
            save_features(path, feats, rows, {"backbone": backbone, "split": split, "key": key,
                                              "pretrained": cfg.pretrained, "n": len(rows)})
            out[split] = feats
        model.to("cpu")  # the head moves to the device with the HeadOnly view; the backbone is done
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        n = sum(len(v[0]) for v in todo.values())
        log(f"linear probe: cached {n} images' features ({', '.join(todo)}) in {time.time() - t0:.1f}s "
            f"under {folder}")
    else:
        log(f"linear probe: reusing cached features under {folder}")
    return out


def cached_feature_setup(cfg, model: nn.Module, index, cache, dcfg: dict, splits: dict, seed: int, accelerator):
    """For the trainer: ``(HeadOnly(model), train_dl, val_dl, test_dl)`` over cached features, or
    ``None`` where the backbone's head cannot be split off (train on images then)."""
    from torch.utils.data import DataLoader, TensorDataset

    with accelerator.main_process_first():
        feats = split_features(cfg, model, index, cache, dcfg, splits, accelerator.device, accelerator.autocast,
                               log=accelerator.print if accelerator.is_main_process else (lambda *_: None),
                               precision=str(accelerator.mixed_precision))
    if feats is None:
        warnings.warn(f"linear probe: {cfg.resolved_backbone()} does not compute model(x) as "
                      f"head(pre-logits features); training on images instead of cached features")
        return None
    labels = torch.as_tensor(np.asarray(index.labels))

    def dataset(split: str) -> TensorDataset:
        return TensorDataset(feats[split], labels[torch.as_tensor(np.asarray(splits[split], dtype=np.int64))])

    g = torch.Generator().manual_seed(seed)
    n_train = len(splits["train"])
    train = DataLoader(dataset("train"), batch_size=cfg.batch_size, shuffle=True, generator=g,
                       drop_last=n_train > cfg.batch_size)  # as the image loader
    val = DataLoader(dataset("val"), batch_size=cfg.batch_size, shuffle=False)
    test = DataLoader(dataset("test"), batch_size=cfg.batch_size, shuffle=False)
    return HeadOnly(model), train, val, test


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def compare_epoch_times(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                        device="cpu", autocast: Callable = contextlib.nullcontext, repeats: int = 1) -> dict:
    """Time one linear-probe epoch over ``images`` (already transformed, e.g. [N, 3, H, W]) two ways,
    on the same model with ``linear_probe`` applied:

    - ``backbone_s``: forward through the frozen backbone + head, backward + AdamW step (head only) -
      what an epoch costs without caching (data loading not included);
    - ``features_s``: the same steps of :class:`HeadOnly` over a DataLoader of cached features;
    - ``extract_s``: the one-time cost of computing the features.

    Best of ``repeats`` for each. Returns those and ``speedup = backbone_s / features_s``.
    """
    from torch.utils.data import DataLoader, TensorDataset

    model = model.to(device)
    head = HeadOnly(model)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    img_dl = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=False)

    def epoch(net, loader) -> float:
        net.train()
        _sync(device)
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast():
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        return time.perf_counter() - t0

    epoch(model, [next(iter(img_dl))])  # warm-up
    backbone_s = min(epoch(model, img_dl) for _ in range(max(1, repeats)))
    _sync(device)
    t0 = time.perf_counter()
    feats = extract(model, img_dl, device, autocast)
    _sync(device)
    extract_s = time.perf_counter() - t0
    feat_dl = DataLoader(TensorDataset(feats, labels), batch_size=batch_size, shuffle=True,
                         generator=torch.Generator().manual_seed(0))
    epoch(head, [next(iter(feat_dl))])  # warm-up
    features_s = min(epoch(head, feat_dl) for _ in range(max(3, repeats)))
    return {"images": len(images), "batch_size": batch_size, "backbone_s": backbone_s, "features_s": features_s,
            "extract_s": extract_s, "speedup": backbone_s / max(features_s, 1e-9)}
