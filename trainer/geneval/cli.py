"""``python -m trainer.geneval``: judge generated images against real ones, offline.

    python -m trainer.geneval --real REAL_DIR --fake GEN_DIR [--fake GEN_DIR2 ...] [--train TRAIN_DIR]
        [--prompts prompts.csv] [--extractor inception --extractor model.safetensors ...] [--json report.json]

Prints FID and KID (bootstrap 95 % intervals), precision/recall/density/coverage (k = 5), MS-SSIM
diversity, and with ``--train`` the memorization report (the ``--real`` images, never trained on, calibrate
the threshold) with a contact sheet PNG. Images are read recursively (PNG, JPEG, TIFF, BMP, WebP, DICOM).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the usage block
        print(f"error: {message} (see python -m trainer.geneval --help)", file=sys.stderr)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m trainer.geneval", description="Judge generated images against real ones, offline: "
                "FID/KID, precision/recall/density/coverage, diversity, memorization of training images.")
    p.add_argument("--real", required=True, help="folder of real (held-out, never trained on) images")
    p.add_argument("--fake", required=True, action="append",
                   help="folder of generated images; repeat to compare several methods (named by folder)")
    p.add_argument("--train", default=None, help="folder of the training images: memorization report")
    p.add_argument("--prompts", default=None, action="append",
                   help="prompts of the generated images (CSV image,prompt or one per line); one per --fake")
    p.add_argument("--extractor", action="append", default=None,
                   help="inception (default), a TorchScript/.safetensors file, or a timm id; repeat for several "
                        "(the first is used for memorization; the report gives Kendall tau between rankings)")
    p.add_argument("--json", default=None, help="write the full report (every image's nearest neighbour) here")
    p.add_argument("--out-dir", default=None, help="where contact sheets go (default: beside --json, else .)")
    p.add_argument("--bootstrap", type=int, default=50, help="bootstrap resamples for the intervals (0: none)")
    p.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate of the memorization flag")
    p.add_argument("--k", type=int, default=5, help="neighbours for precision/recall/density/coverage")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from .extractors import ExtractorError
    from .images import ImageSetError, list_images
    from .report import evaluate, format_report, read_prompts, write_json

    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already said in one line)
        return e.code if isinstance(e.code, int) else 0
    if not 0 < args.fpr < 0.5:
        print(f"error: --fpr must be between 0 and 0.5, got {args.fpr}", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        list_images(args.real, "real")  # folders first: one line before any network loads
        if args.train:
            list_images(args.train, "train")
        fakes = {}
        for folder in args.fake:
            name = Path(folder).name or folder
            while name in fakes:
                name += "'"
            fakes[name] = list_images(folder, "fake")
        prompts = None
        if args.prompts:
            if len(args.prompts) != len(fakes):
                raise ImageSetError(f"--prompts: give one per --fake ({len(fakes)}), got {len(args.prompts)}")
            prompts = {n: read_prompts(p, [f.name for f in files])
                       for (n, files), p in zip(fakes.items(), args.prompts)}
        out_dir = args.out_dir or (str(Path(args.json).parent) if args.json else ".")
        report = evaluate(args.real, fakes, train=args.train, prompts=prompts, extractors=args.extractor or ["inception"],
                          n_boot=args.bootstrap, fpr=args.fpr, k=args.k, out_dir=out_dir, device=device,
                          progress=not args.no_progress)
    except (ImageSetError, ExtractorError, ValueError, RuntimeError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else e.__class__.__name__}", file=sys.stderr)
        return 2
    text = format_report(report)
    body, _, warns = text.partition("\nwarning: ")
    print(body)
    if warns:
        for w in ("warning: " + warns).splitlines():
            print(w, file=sys.stderr)
    if args.json:
        write_json(report, args.json)
        print(f"report: {args.json}")
    return 0
