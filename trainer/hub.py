"""Push MedPEFT adapter folders to the Hugging Face Hub and pull them back.

    url = push_adapter("runs/lora/seed_0/adapter", "org/vit-lora-ham10000", results=results)
    path = pull_adapter("org/vit-lora-ham10000")
    model, config = adapters.io.load_adapter(path)
    # peft methods (LoRA, DoRA, LN tuning) also load with plain peft:
    model = peft.PeftModel.from_pretrained(timm.create_model(backbone, num_classes=K), "org/vit-lora-ham10000")

Command line::

    python -m trainer.hub push FOLDER REPO_ID [--public] [--results results.json] [--message MSG]
    python -m trainer.hub pull REPO_ID [--dest DIR] [--revision REV]

Only the adapter files go up (``medpeft.json``, ``adapter_model.safetensors``, ``adapter_config.json``
for peft methods, and a regenerated ``README.md`` model card): never checkpoints, optimizer states or
anything else in the folder. The folder itself is left untouched. The token comes from ``token=``,
``HF_TOKEN`` or ``hf auth login`` (``huggingface-cli login``); it is never printed or written.
``HF_ENDPOINT`` selects another Hub-compatible server.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from adapters.core import MethodError
from adapters.io import CONFIG_NAME, PAPER_CITATION, WEIGHTS_NAME, AdapterConfig, model_card, read_config
from adapters.registry import get_method
from adapters.unet_lora import DIFFUSERS_LORA_NAME  # U-Net LoRA in diffusers' format

PEFT_CONFIG_NAME = "adapter_config.json"
CARD_NAME = "README.md"
ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME, PEFT_CONFIG_NAME, CARD_NAME, DIFFUSERS_LORA_NAME)
"""Everything an adapter repo holds (besides the Hub's own ``.gitattributes``)."""
PULL_PATTERNS = ["*.json", "*.safetensors", CARD_NAME]
LOGIN_HINT = ("log in with `hf auth login` (or the older `huggingface-cli login`), or set the HF_TOKEN "
              "environment variable to a token with write access (https://huggingface.co/settings/tokens)")


class HubError(RuntimeError):
    """A Hub push/pull failed; the message says what to do. It never contains the token."""


# ------------------------------------------------------------------------------------ model card
def base_model_id(backbone: str) -> str:
    """The Hub id of a backbone: a Hub id stays; a timm name becomes its pretrained weights' repo
    (``resnet50`` -> ``timm/resnet50.a1_in1k``), else ``timm/<name>``."""
    from adapters.backbones import OFFLINE_LITE0

    if "/" in backbone:
        return backbone
    if backbone == OFFLINE_LITE0:  # the same TF EfficientNet-Lite0 ImageNet weights, ported by lukemelas
        return "timm/tf_efficientnet_lite0.in1k"
    try:
        import timm

        hub_id = timm.models.get_pretrained_cfg(backbone).hf_hub_id
    except Exception:  # no pretrained config (e.g. the tiny test backbones)
        hub_id = None
    return hub_id or f"timm/{backbone}"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _eval_metrics(config: AdapterConfig, results: dict | None) -> list[tuple[str, float, str | None, str]]:
    """``(metric, value, split, pretty name)``: test means over seeds from ``results``, else the
    adapter config's own metrics (``test_f1_macro`` -> ``f1_macro`` on ``test``)."""
    out = []
    test = ((results or {}).get("metrics") or {}).get("test") or {}
    if test:
        for k, v in test.items():
            mean = v.get("mean") if isinstance(v, dict) else v
            if _finite(mean):
                n = len(v.get("values") or []) if isinstance(v, dict) else 0
                std = v.get("std") if isinstance(v, dict) else None
                name = f"test {k}" + (f" (mean of {n} seeds, std {std:.4f})" if n > 1 and _finite(std) else "")
                out.append((k, float(mean), "test", name))
        return out
    for k, v in config.metrics.items():
        if _finite(v):
            split, _, metric = k.partition("_") if k.startswith(("test_", "val_")) else (None, "", k)
            out.append((metric, float(v), split, f"{split} {metric}" if split else metric))
    return out


def _training_lines(config: AdapterConfig, results: dict | None) -> list[str]:
    r = results or {}
    tr = config.trainable_params if config.trainable_params is not None else r.get("trainable_params")
    tot = config.total_params if config.total_params is not None else r.get("total_params")
    lines = []
    if tr is not None:
        pct = f" of {tot:,} ({100 * tr / tot:.3f}%)" if tot else ""
        lines.append(f"- trainable parameters: {tr:,}{pct}")
    seed = config.training.get("seed")
    seeds = r.get("seeds") or [p.get("seed") for p in r.get("per_seed") or [] if "seed" in p]
    if seeds:
        lines.append(f"- seeds: {', '.join(map(str, seeds))}" + (f"; these weights: seed {seed}" if seed is not None
                                                                  else ""))
    elif seed is not None:
        lines.append(f"- seed: {seed}")
    sizes = r.get("split_sizes") or {}
    if not sizes and r.get("per_seed"):
        sizes = r["per_seed"][0].get("split_sizes") or {}
    fraction = r.get("fraction", config.training.get("fraction"))
    if sizes:
        lines.append("- split: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + " images"
                     + (f" (training fraction {fraction})" if fraction is not None else ""))
    elif config.training.get("n_train") is not None:
        lines.append(f"- training images: {config.training['n_train']}"
                     + (f" (training fraction {fraction})" if fraction is not None else ""))
    per_seed = [p for p in r.get("per_seed") or [] if isinstance(p.get("test"), dict)]
    if per_seed:
        key = per_seed[0]["test"].get("headline")
        if key and all(_finite(p["test"].get(key)) for p in per_seed):
            lines.append(f"- test {key} per seed: " + ", ".join(f"seed {p.get('seed')}: {p['test'][key]:.4f}"
                                                                 for p in per_seed))
    return lines


def build_model_card(config: AdapterConfig, results: dict | None = None, existing: str | None = None) -> str:
    """The Hub model card of an adapter: front matter (base_model, library_name, tags, datasets,
    model-index eval results) + the description of :func:`adapters.io.model_card` + evaluation and
    training details + the citation. Metadata keys of ``existing`` (a previous README) that MedPEFT
    does not set, e.g. ``license``, are kept. Parsed back with ``huggingface_hub.ModelCard`` to check it."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    method = get_method(config.method)
    dataset = config.dataset or (results or {}).get("dataset")
    task_type = "text-to-image" if config.task == "generation" else "image-classification"
    tags = ["medpeft", "medical-imaging", config.method] + ([dataset] if dataset else [])
    if method.peft:
        tags.append("peft")
    evals = [EvalResult(task_type=task_type, dataset_type=dataset or "custom", dataset_name=dataset or "custom",
                        dataset_split=split, metric_type=metric, metric_value=round(value, 6), metric_name=name)
             for metric, value, split, name in _eval_metrics(config, results)]
    kept: dict[str, Any] = {}
    if existing:
        try:
            kept = ModelCard(existing, ignore_metadata_errors=True).data.to_dict()
        except Exception:  # an unreadable old card is simply replaced
            kept = {}
    ours = {"base_model", "library_name", "tags", "datasets", "model-index", "model_name", "eval_results",
            "pipeline_tag"}
    extra_tags = [t for t in kept.get("tags") or [] if isinstance(t, str) and t not in tags]
    data = ModelCardData(
        base_model=base_model_id(config.backbone), library_name="peft" if method.peft else "timm",
        tags=tags + extra_tags, datasets=[dataset] if dataset else None, pipeline_tag=task_type,
        model_name=f"medpeft-{config.method}-{config.backbone}" + (f"-{dataset}" if dataset else ""),
        eval_results=evals or None, **{k: v for k, v in kept.items() if k not in ours})

    body = model_card(config).split("\n---\n", 1)[1]  # adapters.io's description, without its front matter
    extra = []
    if evals:
        body = _drop_metric_table(body)  # replaced by the Evaluation section
        test = ((results or {}).get("metrics") or {}).get("test") or {}
        extra += ["## Evaluation", "", "| metric | split | value |", "| --- | --- | --- |"]
        for e in evals:
            v = test.get(e.metric_type)
            spread = (f" ± {v['std']:.4f} ({len(v['values'])} seeds)" if isinstance(v, dict) and _finite(v.get("std"))
                      and len(v.get("values") or []) > 1 else "")
            extra.append(f"| {e.metric_type} | {e.dataset_split or ''} | {e.metric_value:.4f}{spread} |")
        if test:
            extra += ["", "Test-set mean (± sample std) over the training seeds, from the run's `results.json`."]
            own = {k: v for k, v in config.metrics.items() if _finite(v)}
            if own:
                seed = config.training.get("seed")
                extra += ["These weights" + (f" (seed {seed})" if seed is not None else "") + ": "
                          + ", ".join(f"{k} {v:.4f}" for k, v in own.items()) + "."]
        extra.append("")
    training = _training_lines(config, results)
    if training:
        extra += ["## Training", ""] + training + [""]
    if extra:
        marker = "## Use\n"
        body = body.replace(marker, "\n".join(extra) + "\n" + marker, 1) if marker in body \
            else body + "\n" + "\n".join(extra)
    if PAPER_CITATION not in body:
        body += f"\n## Citation\n\n```bibtex\n{PAPER_CITATION}\n```\n"
    text = f"---\n{data.to_yaml()}\n---\n{body}"
    _check_card(text, config, len(evals))
    return text


def _drop_metric_table(body: str) -> str:
    lines, out, skipping = body.split("\n"), [], False
    for line in lines:
        if line.strip() == "| metric | value |":
            skipping = True
            if out and not out[-1].strip():
                out.pop()
            continue
        if skipping and line.startswith("|"):
            continue
        skipping = False
        out.append(line)
    return "\n".join(out)


def _check_card(text: str, config: AdapterConfig, n_evals: int) -> None:
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text)  # parses the YAML and the model-index (raises on invalid metadata)
    except Exception as e:
        raise HubError(f"the generated model card is invalid ({e}); this is a MedPEFT bug") from e
    d = card.data
    problems = [name for name, ok in [
        ("base_model", bool(d.base_model)), ("library_name", d.library_name in ("peft", "timm")),
        ("method tag", config.method in (d.tags or [])),
        ("eval results", len(d.eval_results or []) == n_evals), ("citation", PAPER_CITATION in card.text)] if not ok]
    if problems:
        raise HubError(f"the generated model card lacks {', '.join(problems)}; this is a MedPEFT bug")


# ------------------------------------------------------------------------------------ errors
def _endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _is_network_error(e: BaseException) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"TransportError", "ConnectError", "TimeoutException", "ConnectionError", "Timeout",
                         "ProxyError"}) or isinstance(e, (ConnectionError, TimeoutError, socket.gaierror))


def _hub_error(e: BaseException, action: str, repo_id: str, endpoint: str, token: str | None) -> HubError:
    from huggingface_hub import errors

    status = getattr(getattr(e, "response", None), "status_code", None)
    namespace = repo_id.split("/")[0] if "/" in repo_id else "your user namespace"
    offline = isinstance(e, errors.OfflineModeIsEnabled) or "HF_HUB_OFFLINE" in str(e)
    if offline:
        msg = f"{action} {repo_id}: offline mode is on (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE to reach the Hub"
    elif _is_network_error(e) or (isinstance(e, errors.LocalEntryNotFoundError) and status is None):
        msg = (f"{action} {repo_id}: could not reach the Hugging Face Hub at {endpoint} ({type(e).__name__}): "
               "check your network connection and proxy, and that HF_ENDPOINT (if set) points to a Hub")
    elif isinstance(e, errors.RevisionNotFoundError):
        msg = f"{action} {repo_id}: revision not found: check the branch, tag or commit name"
    elif isinstance(e, errors.RepositoryNotFoundError):
        msg = (f"{action} {repo_id}: repository not found, or it is private and your token cannot read it: "
               f"check the repo id, and {LOGIN_HINT}")
    elif status == 401:
        msg = f"{action} {repo_id}: the Hub rejected the token (401 Unauthorized): {LOGIN_HINT}"
    elif status == 403:
        msg = (f"{action} {repo_id}: your token may not write to '{namespace}' (403 Forbidden): use a token with "
               f"write access to it (https://huggingface.co/settings/tokens), or push to your own namespace")
    elif isinstance(e, errors.HfHubHTTPError):
        msg = f"{action} {repo_id} failed (HTTP {status}): {e}"
    else:
        msg = f"{action} {repo_id} failed: {type(e).__name__}: {e}"
    if token:
        msg = msg.replace(token, "***")
    return HubError(msg)


# ------------------------------------------------------------------------------------ push / pull
def _stage(folder: Path, card: str, tmp: Path) -> list[str]:
    """The files to upload, in ``tmp`` (hard links where possible): weights, configs, card."""
    names = [CONFIG_NAME, WEIGHTS_NAME] + ([PEFT_CONFIG_NAME] if (folder / PEFT_CONFIG_NAME).is_file() else [])
    for name in names:
        src = (folder / name).resolve()
        try:
            os.link(src, tmp / name)
        except OSError:
            shutil.copyfile(src, tmp / name)
    (tmp / CARD_NAME).write_text(card, encoding="utf-8")
    return names + [CARD_NAME]


def push_adapter(folder: str | os.PathLike, repo_id: str, private: bool = True, results: dict | None = None,
                 token: str | None = None, commit_message: str | None = None, endpoint: str | None = None) -> str:
    """Upload the adapter ``folder`` to the model repo ``repo_id`` (created if needed, ``private`` by
    default; an existing repo keeps its visibility) with a regenerated model card; returns the repo URL.

    ``results``: the run's ``results.json`` dict (test metrics over seeds, splits) for the card;
    without it the card uses the adapter config's own metrics. Adapter files the folder no longer
    has (e.g. a stale ``adapter_config.json``) are deleted from the repo; other repo files stay.
    """
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    try:
        config = read_config(folder)
    except MethodError as e:
        raise HubError(f"cannot push {folder}: {e}") from None
    if not (folder / WEIGHTS_NAME).is_file():
        raise HubError(f"cannot push {folder}: {WEIGHTS_NAME} not found (not a complete adapter folder)")
    if get_method(config.method).peft and not (folder / PEFT_CONFIG_NAME).is_file():
        raise HubError(f"cannot push {folder}: method {config.method!r} is a peft method but {PEFT_CONFIG_NAME} "
                       "is missing (save the folder with adapters.io.save_adapter)")
    old_card = folder / CARD_NAME
    card = build_model_card(config, results, old_card.read_text(encoding="utf-8") if old_card.is_file() else None)

    token = token or get_token()
    if not token:
        raise HubError(f"cannot push to {repo_id}: no Hugging Face token: {LOGIN_HINT}")
    endpoint = _endpoint(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    message = commit_message or (f"Upload MedPEFT {config.method} adapter ({config.backbone}"
                                 + (f", {config.dataset})" if config.dataset else ")"))
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        repo_id = url.repo_id or repo_id  # a bare name resolves to the token's user namespace
        with tempfile.TemporaryDirectory(prefix="medpeft-push-") as tmp:
            names = _stage(folder, card, Path(tmp))
            api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=tmp, allow_patterns=names,
                              delete_patterns=list(ADAPTER_FILES), commit_message=message)
    except HubError:
        raise
    except Exception as e:
        raise _hub_error(e, "push to", repo_id, endpoint, token) from None
    return str(url)


def pull_adapter(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                 token: str | None = None, local_dir: str | os.PathLike | None = None,
                 endpoint: str | None = None) -> Path:
    """Download the adapter files of ``repo_id`` (``*.json``, ``*.safetensors``, ``README.md``) into the
    Hugging Face cache (or ``local_dir``); returns the folder, ready for :func:`adapters.io.load_adapter`."""
    from huggingface_hub import snapshot_download

    endpoint = _endpoint(endpoint)
    try:
        path = Path(snapshot_download(repo_id=repo_id, repo_type="model", revision=revision, cache_dir=cache_dir,
                                      local_dir=local_dir, token=token, allow_patterns=PULL_PATTERNS,
                                      endpoint=endpoint))
    except Exception as e:
        raise _hub_error(e, "pull", repo_id, endpoint, token) from None
    try:
        read_config(path)
    except MethodError as e:
        raise HubError(f"{repo_id} is not a MedPEFT adapter repo: {e}") from None
    return path


# ------------------------------------------------------------------------------------ CLI
def _find_results(folder: Path) -> dict | None:
    """The ``results.json`` of the run whose ``adapter_dir`` is ``folder`` (``<run>/seed_N/adapter``)."""
    for parent in list(folder.resolve().parents)[:3]:
        path = parent / "results.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return None
            if isinstance(data, dict) and (parent / str(data.get("adapter_dir", ""))).resolve() == folder.resolve():
                return data
            return None
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.hub", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    push = sub.add_parser("push", help="upload an adapter folder to a Hub model repo")
    push.add_argument("folder")
    push.add_argument("repo_id", help="owner/name")
    push.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    push.add_argument("--results", help="the run's results.json for the model card (default: found next to "
                                        "the folder when it is a run's adapter_dir)")
    push.add_argument("--message", help="commit message")
    pull = sub.add_parser("pull", help="download an adapter from a Hub model repo")
    pull.add_argument("repo_id")
    pull.add_argument("--dest", help="download into this folder (default: the Hugging Face cache)")
    pull.add_argument("--revision", help="branch, tag or commit (default: main)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "push":
            folder = Path(args.folder)
            if args.results:
                try:
                    results = json.loads(Path(args.results).read_text())
                except (OSError, json.JSONDecodeError) as e:
                    raise HubError(f"cannot read --results {args.results}: {e}") from None
            else:
                results = _find_results(folder)
            url = push_adapter(folder, args.repo_id, private=not args.public, results=results,
                               commit_message=args.message)
            print(f"pushed {folder} to {url}")
        else:
            path = pull_adapter(args.repo_id, revision=args.revision, local_dir=args.dest)
            print(path)
    except HubError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
