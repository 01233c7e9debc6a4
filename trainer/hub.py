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
``HF_ENDPOINT`` selects another Hub-compatible server. The model card is :mod:`trainer.card`'s.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from adapters.core import MethodError
from adapters.io import CONFIG_NAME, WEIGHTS_NAME, read_config
from adapters.registry import get_method
from adapters.methods.unet_lora import DIFFUSERS_LORA_NAME  # U-Net LoRA in diffusers' format

from .card import CardError, build_model_card
from .run_dir import ResultsError, RunResults

PEFT_CONFIG_NAME = "adapter_config.json"
CARD_NAME = "README.md"
ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME, PEFT_CONFIG_NAME, CARD_NAME, DIFFUSERS_LORA_NAME)
"""Everything an adapter repo holds (besides the Hub's own ``.gitattributes``)."""
PULL_PATTERNS = ["*.json", "*.safetensors", CARD_NAME]
LOGIN_HINT = ("log in with `hf auth login` (or the older `huggingface-cli login`), or set the HF_TOKEN "
              "environment variable to a token with write access (https://huggingface.co/settings/tokens)")


class HubError(RuntimeError):
    """A Hub push/pull failed; the message says what to do. It never contains the token."""


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
    try:
        card = build_model_card(config, results, old_card.read_text(encoding="utf-8") if old_card.is_file() else None)
    except CardError as e:
        raise HubError(str(e)) from None

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
                    results = RunResults.read(args.results).data
                except ResultsError as e:
                    raise HubError(f"cannot read --results: {e}") from None
            else:
                found = RunResults.of_adapter(folder)
                results = found.data if found is not None else None
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
