"""The training loop a user would write by hand from the timm and peft documentation: what
``python -m trainer.perf --vs-baseline`` compares MedPEFT's trainer against.

    python benchmarks/baseline_timm_peft.py --folder imgs/ --backbone vit_base_patch16_224 --method lora \
        --batch-size 128 --epochs 3 --json baseline.json

- data: ``torchvision.datasets.ImageFolder`` with timm's own training transform
  (``resolve_data_config`` + ``create_transform(is_training=True)``): every image is opened and
  decoded by PIL in every epoch;
- model: ``timm.create_model`` and the same PEFT method as the trainer's, so both sides train the
  very same parameters (``adapters.apply_method``; for LoRA that is peft's ``LoraConfig`` +
  ``get_peft_model`` on the same target modules, see adapters/methods/lora.py);
- loop: ``torch.optim.AdamW`` with its defaults over the trainable parameters, fp32 (PyTorch's
  default precision), ``F.cross_entropy``, zero_grad / backward / step. Nothing else: no mixed
  precision, no channels_last, no fused optimizer, no pinned memory.

Timing: the first epoch is a warm-up (worker start, allocator, kernel selection) and not timed when
there are two or more; images/s is over the remaining epochs, data loading included. Peak memory:
on CUDA ``torch.cuda.max_memory_allocated``; on CPU this process's peak resident size (Linux
``VmHWM``) above its size just before the model was built (loader worker processes not counted).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.data import create_transform, resolve_data_config
from torchvision.datasets import ImageFolder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's adapters, when run as a script

from adapters import apply_method  # noqa: E402
from trainer.study.perf.memory import proc_status, reset_peak_rss, timed_epochs  # noqa: E402  (measuring only)


def run_baseline(folder: str, backbone: str, method: str, batch_size: int, epochs: int, device: str,
                 img_size: int | None = None, num_workers: int = 4, lr: float = 1e-3) -> dict:
    """Train ``epochs`` epochs over the ImageFolder at ``folder``; returns ``images_per_s`` (timed
    epochs), ``peak_mem_bytes`` and the per-epoch times."""
    dataset = ImageFolder(folder)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()
    rss_before = proc_status("VmRSS")

    torch.manual_seed(0)
    # A ViT's input size is fixed when it is built; a CNN takes any size (its transform is told).
    vit = backbone.startswith(("vit_", "deit"))
    kwargs = {"img_size": img_size} if img_size and vit else {}
    model = timm.create_model(backbone, pretrained=False, num_classes=len(dataset.classes), **kwargs)
    model = apply_method(model, method)
    model = model.to(device)

    config = resolve_data_config({"input_size": (3, img_size, img_size)} if img_size else {}, model=model)
    dataset.transform = create_transform(**config, is_training=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                                         drop_last=len(dataset) > batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    epoch_s, images = [], []
    for _ in range(epochs):
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(y)
        if cuda:
            torch.cuda.synchronize()
        epoch_s.append(time.perf_counter() - t0)
        images.append(seen)

    return {**timed_epochs(epoch_s, images, cuda, rss_before), "precision": "fp32", "memory_format": "contiguous", "num_workers": num_workers,
            "input_size": list(config["input_size"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", required=True, help="an ImageFolder: one sub-folder of images per class")
    p.add_argument("--backbone", default="vit_base_patch16_224")
    p.add_argument("--method", default="lora")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--img-size", type=int, help="input side (default: the model's)")
    p.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="CPU: torch threads")
    p.add_argument("--json", dest="json_path", help="write the result here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_baseline(args.folder, args.backbone, args.method, args.batch_size, args.epochs, args.device,
                          args.img_size, num_workers=args.num_workers)
    peak = result["peak_mem_bytes"]
    print(f"baseline: {result['images_per_s']:.1f} images/s, peak memory "
          f"{'n/a' if peak is None else f'{peak / 2**20:.0f} MB'}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
