"""Deploy the MedPEFT app to a Hugging Face Space.

    python spaces_config/deploy.py --repo USER/SPACE [--private] [--variable MEDPEFT_HUB_ADAPTERS=org/a,org/b]
    python spaces_config/deploy.py --repo USER/SPACE --dry-run      # list the files, upload nothing

Uploads app.py, ui/, adapters/ and trainer/ (Python sources and the reference CSV), the Space's
requirements.txt and its README.md (the Space card with the front matter) at the Space root.
Never uploads virtual environments, runs, tests, caches or weights. The token comes from
HF_TOKEN or ``huggingface-cli login``; it is never printed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

# (source folder, suffixes) included recursively; everything else is left out.
PACKAGES = {"adapters": (".py",), "trainer": (".py", ".csv"), "ui": (".py",)}
TOP_FILES = ["app.py"]
# At the Space root: destination -> source.
RENAMED = {"README.md": HERE / "README.md", "requirements.txt": HERE / "requirements.txt"}
EXCLUDED_DIRS = {".venv", "venv", "runs", "tests", "__pycache__", ".git", ".cache", "outputs", "medpeft_runs",
                 "test-artifacts", ".gradio", "flagged", ".pytest_cache"}


def space_files(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Space path -> local file, for everything the Space needs."""
    files: dict[str, Path] = {}
    for name in TOP_FILES:
        files[name] = root / name
    for pkg, suffixes in PACKAGES.items():
        base = root / pkg
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith("."))
            for f in sorted(filenames):
                if f.endswith(suffixes) and not f.startswith("."):
                    path = Path(dirpath) / f
                    files[path.relative_to(root).as_posix()] = path
    files.update({dst: src for dst, src in RENAMED.items()})
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"missing file(s): {', '.join(missing)}")
    return dict(sorted(files.items()))


def stage(files: dict[str, Path], folder: Path) -> None:
    for dst, src in files.items():
        out = folder / dst
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)


def space_card(text: str, sd_base: str | None) -> str:
    """The Space card with ``sd_base`` (MEDPEFT_SD_BASE, a Hub id) added to ``preload_from_hub``, so the
    Stable Diffusion base is downloaded when the Space is built, not on the first generation."""
    if not sd_base or "/" not in sd_base or sd_base.startswith(("/", ".", "~")) or f"  - {sd_base}\n" in text:
        return text
    for key in ("models:\n", "preload_from_hub:\n"):  # preloaded models are listed as the Space's models too
        head, sep, rest = text.partition(key)
        text = head + sep + f"  - {sd_base}\n" + rest if sep else text
    return text


def parse_variables(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--variable takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", required=True, help="the Space, USER/SPACE or ORG/SPACE")
    p.add_argument("--private", action="store_true", help="create the Space private")
    p.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded; upload nothing")
    p.add_argument("--variable", action="append", default=[], metavar="KEY=VALUE",
                   help="set a Space variable (repeatable), e.g. MEDPEFT_HUB_ADAPTERS=org/adapter")
    p.add_argument("--message", default="Deploy MedPEFT app", help="commit message")
    args = p.parse_args(argv)
    if "/" not in args.repo:
        raise SystemExit("--repo must be USER/SPACE")
    files = space_files()
    variables = parse_variables(args.variable)
    if args.dry_run:
        for dst, src in files.items():
            print(f"{dst}" + (f"  (from {src.relative_to(REPO_ROOT).as_posix()})"
                              if dst != src.relative_to(REPO_ROOT).as_posix() else ""))
        print(f"{len(files)} files -> https://huggingface.co/spaces/{args.repo} (dry run: nothing uploaded)")
        for k in variables:
            print(f"would set Space variable {k}")
        return 0

    from huggingface_hub import HfApi

    api = HfApi(token=os.environ.get("HF_TOKEN") or None)  # None: the token saved by huggingface-cli login
    url = api.create_repo(args.repo, repo_type="space", space_sdk="gradio", private=args.private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medpeft-space-") as tmp:
        stage(files, Path(tmp))
        card = Path(tmp) / "README.md"
        card.write_text(space_card(card.read_text(encoding="utf-8"), variables.get("MEDPEFT_SD_BASE")),
                        encoding="utf-8")
        api.upload_folder(folder_path=tmp, repo_id=args.repo, repo_type="space", commit_message=args.message,
                          delete_patterns=["adapters/*.py", "trainer/*.py"])  # stale sources (fnmatch: * spans /)
    for key, value in variables.items():
        api.add_space_variable(args.repo, key, value)
        print(f"set Space variable {key}")
    print(f"uploaded {len(files)} files to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
