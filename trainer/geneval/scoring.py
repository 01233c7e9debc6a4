"""A generation run's own scores: sample from the fine-tuned U-Net for the test prompts (Table 4's FID,
as before) and for the validation prompts (what a search optimises), and judge both with
:func:`trainer.geneval.report.evaluate`: FID, KID, precision/recall/density/coverage, MS-SSIM diversity,
and memorization against the run's own training pairs, calibrated on the split's real images (never
trained on). Plus the noise-norm memorization score (Wen et al.) on training and held-out prompts.

Written under the run folder::

    fid/generated/00000.png ...        the test-prompt samples (fid/prompts.csv: their prompts)
    geneval/val/generated/...          the validation-prompt samples
    geneval/<split>.json               the full report (every image's nearest training image)
    geneval/<split>/memorization_generated.png   the contact sheet
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import torch

MAX_TRAIN_IMAGES = 5000  # nearest-neighbour search over at most this many training pairs (seeded choice)
NOISE_NORM_PROMPTS = 16
SUMMARY_KEYS = ("fid", "kid")
PRDC_KEYS = ("precision", "recall", "density", "coverage")


@torch.no_grad()
def generate_images(pipe, prompts: list[str], seeds: list[int], cfg, accelerator, batch_size: int) -> list:
    """PIL images for ``prompts``, one seeded CPU generator per image (reproducible on any device)."""
    images = []
    for i in range(0, len(prompts), batch_size):
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds[i:i + batch_size]]
        with accelerator.autocast():
            out = pipe(prompts[i:i + batch_size], num_inference_steps=cfg.num_inference_steps,
                       guidance_scale=cfg.guidance_scale, generator=gens, height=cfg.resolution,
                       width=cfg.resolution, output_type="pil")
        images += out.images
    return images


def summary(entry: dict, extractor: str = "inception") -> dict:
    """The scalar scores of one report entry (lower is better for fid, kid, ms_ssim and memorization)."""
    fid = entry["fidelity"][extractor]
    out = {k: fid[k] for k in SUMMARY_KEYS}
    out.update({k: v for k, v in entry["prdc"].get(extractor, {}).items() if k in PRDC_KEYS})
    if entry["diversity"].get("ms_ssim") is not None:
        out["ms_ssim"] = entry["diversity"]["ms_ssim"]
    mem = entry.get("memorization")
    if mem:
        out["memorization"] = mem["flagged_fraction"]
        per = mem["per_image"]
        out["nn_pixel_distance"] = sum(r["pixel_distance"] for r in per) / len(per)
    return out


def _save(images, prompts, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / "prompts.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "prompt"])
        for i, (img, p) in enumerate(zip(images, prompts)):
            img.save(folder / f"{i:05d}.png")
            w.writerow([f"{i:05d}.png", p])


def score_split(cfg, pipe, pairs, train_images, folder: Path, accelerator, seed: int, offset: int, n_boot: int = 20):
    """Generate ``cfg.fid_samples`` images for ``pairs``' prompts (cycled) and judge them against as many
    of the pairs' real images; returns (summary, full report)."""
    from ..data.text2img import load_grayscale
    from .report import evaluate

    n = int(cfg.fid_samples)
    prompts = [pairs[i % len(pairs)].text for i in range(n)]
    fakes = generate_images(pipe, prompts, [seed * 1_000_003 + offset + i for i in range(n)], cfg, accelerator,
                            batch_size=max(1, cfg.batch_size))
    _save(fakes, prompts, folder / "generated")
    reals = [load_grayscale(p.path, cfg.resolution).convert("RGB") for p in pairs[:n]]
    report = evaluate(reals, {"generated": fakes}, train=train_images, prompts={"generated": prompts},
                      extractors=["inception"], n_boot=n_boot, out_dir=folder, device=str(accelerator.device),
                      progress=accelerator.is_main_process, seed=seed)
    return summary(report["sets"]["generated"]), report


def score_run(cfg, parts, unet, data, out: Path, accelerator, seed: int, search_trial: bool = False) -> dict:
    """Test and validation scores of a fine-tuned U-Net, the noise-norm score, and the sample sizes;
    ``search_trial``: validation only (an HPO trial never sees the test split)."""
    import random

    from ..data.text2img import load_grayscale
    from ..diffusion import build_pipeline
    from .noise_norm import noise_norm_report
    from .report import write_json

    unet.eval()
    pipe = build_pipeline(parts, unet)
    train_pairs = list(data.train)
    if len(train_pairs) > MAX_TRAIN_IMAGES:
        train_pairs = random.Random(seed).sample(train_pairs, MAX_TRAIN_IMAGES)
    train_images = [load_grayscale(p.path, cfg.resolution).convert("RGB") for p in train_pairs]
    scores: dict = {"val": None, "test": None}
    for split, pairs, folder, offset in (("test", data.test, out / "fid", 0),
                                         ("val", data.val, out / "geneval" / "val", 500_000)):
        if not pairs or (search_trial and split == "test"):
            continue
        summ, report = score_split(cfg, pipe, pairs, train_images, folder, accelerator, seed, offset)
        write_json(report, out / "geneval" / f"{split}.json")
        scores[split] = summ
        if split == ("val" if search_trial else "test"):
            entry = report["sets"]["generated"]
            warning = entry["fidelity"]["inception"]["warning"]
            if warning:
                warnings.warn(warning, stacklevel=2)
                accelerator.print(f"warning: {warning}")
            scores["fid_samples"] = {"real": report["n_real"], "generated": entry["n"], "warning": warning}
    scores.setdefault("fid_samples", {"real": 0, "generated": 0, "warning": None})
    held = data.val or data.test
    rng = random.Random(seed)
    pick = lambda pairs: [p.text for p in rng.sample(pairs, min(NOISE_NORM_PROMPTS, len(pairs)))]  # noqa: E731
    scores["noise_norm"] = noise_norm_report(pipe, pick(data.train), pick(held), steps=min(5, cfg.num_inference_steps),
                                             guidance=cfg.guidance_scale, seed=seed, resolution=cfg.resolution)
    return scores
