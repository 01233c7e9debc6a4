"""``python -m adapters list``: the registered PEFT methods, and what each costs on a backbone.

    python -m adapters list                                      # every method: families, summary
    python -m adapters list --backbone resnet50 --num-classes 3  # trainable counts on that backbone
    python -m adapters list --backbone vit_base_patch16_224 --num-classes 3 --json
    python -m adapters list --unet tiny                          # U-Net methods (needs adapters.methods.unet)
    python -m adapters convert-checkpoint MRM.pth MRM.safetensors  # a foundation checkpoint's tensors only
    python -m adapters backbones [--json]                        # foundation presets: Hub id, licence, gating

The backbone is built once with random weights (nothing is downloaded); each method is applied
to a deep copy, counted, and merged to check whether it folds into this backbone. The paper's
reported counts come from ``trainer/reference/dutt2024_reported.csv`` when that file exists
(``--reference`` to point elsewhere); nothing is hard-coded here.
"""
from __future__ import annotations

import argparse
import copy
import csv
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from . import METHODS, BackboneError, MethodError, NotMergeable, apply_method, count_params, create_backbone
from .core import family_of
from .registry import merge_method, methods_for

DEFAULT_REFERENCE = Path(__file__).resolve().parent.parent / "trainer" / "reference" / "dutt2024_reported.csv"


class UsageError(Exception):
    """A bad argument: message on stderr, exit code 2."""


def human(n: int) -> str:
    """59,267 -> '59.3K'; 23,514,179 -> '23.5M'."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def paper_backbone_names(backbone: str) -> list[str]:
    """Names a timm backbone may have in the paper's CSV: ``resnet50.a1_in1k`` -> ``resnet50``,
    ``vit_base_patch16_224.augreg_in21k`` -> ``vit_base_patch16_224``, ``vit_base``."""
    arch = backbone.split(".")[0]
    names = [backbone, arch]
    parts = arch.split("_")
    if len(parts) > 2:
        names.append("_".join(parts[:2]))
    return list(dict.fromkeys(names))


def read_reported(path: Path | None, backbone: str) -> dict[str, str]:
    """paper method name -> reported trainable count(s) for this backbone (distinct values joined)."""
    if path is None or not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    names = paper_backbone_names(backbone)
    for name in names:  # the most specific backbone name that has rows wins
        values: dict[str, list[str]] = {}
        for row in rows:
            if (row.get("backbone") or "").strip() != name:
                continue
            value = (row.get("trainable_params_reported") or "").strip()
            method = (row.get("method") or "").strip()
            if method and value and value not in values.setdefault(method, []):
                values[method].append(value)
        if values:
            return {m: " / ".join(v) for m, v in values.items() if v}
    return {}


def survey(model, methods, reported: dict[str, str]) -> list[dict[str, Any]]:
    """Apply each method to a copy of ``model``; count, and try merging."""
    rows = []
    family = family_of(model)
    for method in methods:
        paper = method.paper_row(family)
        row: dict[str, Any] = {"method": method.name, "trainable": None, "total": None, "percent": None,
                               "mergeable": False, "peft": method.peft, "identity_at_init": method.identity_at_init,
                               "paper_name": paper, "reported": reported.get(paper) if paper else None}
        try:
            adapted = apply_method(copy.deepcopy(model), method.name)
        except (MethodError, ValueError, TypeError) as e:
            row["error"] = str(e)
            rows.append(row)
            continue
        trainable, total = count_params(adapted)
        row.update(trainable=trainable, total=total, percent=100.0 * trainable / total if total else 0.0)
        if method.merge is not None:
            try:
                merge_method(adapted)
                row["mergeable"] = True
            except NotMergeable as e:
                row["merge_note"] = str(e)
        rows.append(row)
        del adapted
    return rows


def print_table(rows: list[dict[str, Any]], title: str, out=None) -> None:
    out = out or sys.stdout
    header = ["method", "trainable", "%", "merge", "paper row", "paper reported"]
    body = []
    for r in rows:
        if r["trainable"] is None:
            body.append([r["method"], "n/a", "", "", r["paper_name"] or "-", r["reported"] or "-"])
            continue
        body.append([r["method"], f"{human(r['trainable'])} ({r['trainable']:,})", f"{r['percent']:.3f}",
                     "yes" if r["mergeable"] else "no", r["paper_name"] or "-", r["reported"] or "-"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    print(title, file=out)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for line in body:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip(), file=out)
    notes = [(r["method"], r.get("error") or r.get("merge_note")) for r in rows]
    notes = [f"  {m}: {n.removeprefix(m + ': ')}" for m, n in notes if n]
    if notes:
        print("notes:", *notes, sep="\n", file=out)


def list_methods(as_json: bool) -> None:
    methods = sorted(METHODS.values(), key=lambda m: m.name)
    if as_json:
        print(json.dumps([{"method": m.name, "families": list(m.families), "summary": m.summary, "paper": m.paper,
                           "defaults": m.defaults, "mergeable": m.merge is not None, "peft": m.peft,
                           "identity_at_init": m.identity_at_init, "paper_name": m.paper_name}
                          for m in methods], indent=2, default=str))
        return
    width = max(len(m.name) for m in methods)
    fam_width = max(len("/".join(m.families)) for m in methods)
    for m in methods:
        hp = f"  [{', '.join(f'{k}={v!r}' for k, v in m.defaults.items())}]" if m.defaults else ""
        print(f"{m.name.ljust(width)}  {'/'.join(m.families).ljust(fam_width)}  {m.summary}{hp}")


def build_unet(spec: str):
    from .methods.unet import build_unet as build

    try:
        return build(spec)
    except (BackboneError, OSError, ValueError) as e:
        raise UsageError(f"--unet {spec}: {e}") from None


def cmd_list(args: argparse.Namespace) -> None:
    if args.unet and args.backbone:
        raise UsageError("give --backbone or --unet, not both")
    if args.unet:
        model, label = build_unet(args.unet), f"U-Net {args.unet}"
        reported = read_reported(args.reference, "stable_diffusion_unet")
    elif args.backbone:
        if args.num_classes is None:
            raise UsageError("--backbone needs --num-classes K")
        if args.num_classes < 0:
            raise UsageError("--num-classes must be >= 0")
        try:
            model = create_backbone(args.backbone, args.num_classes, pretrained=False, img_size=args.img_size)
        except BackboneError as e:
            raise UsageError(str(e)) from None
        label = f"{args.backbone}, {args.num_classes} classes" + (f", {args.img_size}px" if args.img_size else "")
        reported = read_reported(args.reference, args.backbone)
    else:
        list_methods(args.json)
        return
    model.eval()
    family = family_of(model)
    rows = survey(model, methods_for(family), reported)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        total = sum(p.numel() for p in model.parameters())
        print_table(rows, f"{label} ({family}; base model {human(total)} = {total:,} parameters)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adapters", description="MedPEFT adapters")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="registered methods; with --backbone, their trainable counts on it")
    ls.add_argument("--backbone", help="timm model name (random weights, nothing downloaded)")
    ls.add_argument("--num-classes", type=int, help="classes of the head (needed with --backbone)")
    ls.add_argument("--img-size", type=int, help="input resolution for ViTs")
    ls.add_argument("--unet", metavar="tiny|sd15|PATH", help="list the U-Net methods on this U-Net")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                    help="CSV of the paper's reported numbers (default: trainer/reference/dutt2024_reported.csv)")
    cv = sub.add_parser("convert-checkpoint", help="write the tensors of a .pth checkpoint (read with "
                        "weights_only=True) to .safetensors")
    cv.add_argument("src", type=Path, help="checkpoint: MAE-style .pth, state dict, .safetensors")
    cv.add_argument("dst", type=Path, help="output .safetensors file")
    bb = sub.add_parser("backbones", help="foundation-model presets (--backbone NAME): Hub id, format, "
                        "pooling, normalisation, licence, gating")
    bb.add_argument("--json", action="store_true", help="machine-readable output (every column)")
    return p


def cmd_convert(args: argparse.Namespace) -> None:
    from .checkpoints import CheckpointError, convert_checkpoint

    try:
        n = convert_checkpoint(args.src, args.dst)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    print(f"wrote {n} tensors to {args.dst}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "list":
            cmd_list(args)
        elif args.command == "convert-checkpoint":
            cmd_convert(args)
        elif args.command == "backbones":
            from .foundation import print_backbones

            print_backbones(args.json)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
