"""Find MedPEFT adapters on the Hugging Face Hub before downloading them, and pull the chosen one.

    listing = search_hub(task="classification", dataset="ham10000", repos=["org/extra-adapter"])
    for a in listing: print(a.repo_id, a.method, a.headline, a.headline_value, a.worst_group, a.ece)
    folder = pull(listing[0].repo_id, progress=callback)   # into the Hugging Face cache; later pulls hit it

Search is ``HfApi.list_models(filter=["medpeft", "medpeft-task:classification", ...], cardData=True)``: the
tags every ``--push-to-hub`` repo carries (:func:`trainer.card.discovery_tags`) and the card's model-index
(headline, worst-group score, ECE, trainable parameters: :func:`trainer.card.discovery_summary`), so nothing
but the listing is downloaded. Repos named in ``MEDPEFT_HUB_ADAPTERS`` are added (their card read, filters
applied). Offline, the listing is empty and says so in one line; local adapters are served as ever.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..card import discovery_summary, discovery_tag
from ..hub import HubError, pull_adapter
from ..preflight import hub_reachable

ALL = ("", "All", None)


@dataclass
class HubAdapter:
    """One Hub repo as the listing shows it (nothing downloaded but its card metadata)."""

    repo_id: str
    method: str | None = None
    dataset: str | None = None
    task: str | None = None
    backbone: str | None = None
    headline: str | None = None
    headline_value: float | None = None
    worst_group: float | None = None
    ece: float | None = None
    trainable_params: int | None = None
    cached: bool = False  # already pulled into the local Hugging Face cache
    listed_by: str = "search"  # search | MEDPEFT_HUB_ADAPTERS

    @property
    def key(self) -> str:
        return f"hub:{self.repo_id}"

    def label(self) -> str:
        parts = [self.repo_id, self.method or "?", self.backbone or "?", self.dataset or "?"]
        if self.headline_value is not None:
            parts.append(f"test {self.headline or 'score'} {100 * self.headline_value:.1f}%")
        if self.worst_group is not None:
            parts.append(f"worst group {100 * self.worst_group:.1f}%")
        if self.ece is not None:
            parts.append(f"ECE {self.ece:.3f}")
        parts.append("cached" if self.cached else "not downloaded")
        return " · ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The keys of ``AdapterInfo.to_dict`` (so ``/adapters`` clients read both), plus the card metrics."""
        d = asdict(self)
        d.update(key=self.key, name=self.repo_id, source="hub-listing", num_classes=None, class_names=[],
                 test_f1=self.headline_value if self.headline == "f1_macro" else None, total_params=None,
                 demo=False, label=self.label())
        return d


class HubListing(list):
    """:class:`HubAdapter` items, the messages of the search (offline, unreadable repos), ``offline``."""

    def __init__(self, items=(), messages: list[str] | None = None, offline: bool = False):
        super().__init__(items)
        self.messages = list(messages or [])
        self.offline = offline


def _is_cached(repo_id: str, cache_dir: str | os.PathLike | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "medpeft.json", cache_dir=cache_dir), str)
    except Exception:  # noqa: BLE001 - a malformed id or cache: simply not cached
        return False


def _from_model(repo_id: str, tags, eval_results, cache_dir, listed_by: str) -> HubAdapter:
    s = discovery_summary(list(tags or []), eval_results)
    return HubAdapter(repo_id=repo_id, method=s["method"], dataset=s["dataset"], task=s["task"],
                      backbone=s["backbone"], headline=s["headline"], headline_value=s["headline_value"],
                      worst_group=s["worst_group"], ece=s["ece"], trainable_params=s["trainable_params"],
                      cached=_is_cached(repo_id, cache_dir), listed_by=listed_by)


def _reachable(endpoint: str | None, timeout: float = 2.0) -> bool:
    """A TCP connection to the Hub (``endpoint``, default ``HF_ENDPOINT``) opens: checked in at most
    ``timeout`` seconds, instead of the client's retries taking most of a minute offline."""
    if endpoint is None:
        return hub_reachable()
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "", url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:200] if text else type(e).__name__


def search_hub(task: str | None = None, dataset: str | None = None, backbone: str | None = None,
               method: str | None = None, repos: list[str] | tuple[str, ...] = (), *, endpoint: str | None = None,
               token: str | None = None, cache_dir: str | os.PathLike | None = None, limit: int = 200,
               where: Callable[[HubAdapter], bool] | None = None) -> HubListing:
    """The Hub's MedPEFT adapters matching the filters (None / "All": any), plus ``repos``. Never raises:
    offline or unreachable, the listing is empty with one message. ``where``: a further filter (e.g. the
    app's per-visitor rules)."""
    from huggingface_hub import HfApi, ModelCard, hf_hub_download

    if not _reachable(endpoint):
        return HubListing([], ["the Hugging Face Hub is not reachable (offline): Hub adapters are not listed; "
                               "local adapters are served as usual"], offline=True)
    wanted = {"task": task, "dataset": dataset, "backbone": backbone, "method": method}
    filters = ["medpeft"] + [discovery_tag(k, v) for k, v in wanted.items() if v not in ALL]
    api = HfApi(endpoint=endpoint, token=token)
    try:
        models = list(api.list_models(filter=filters, cardData=True, limit=limit))
    except Exception as e:  # noqa: BLE001 - offline, proxy, server error: one line, never fatal
        return HubListing([], [f"Hub search failed ({_reason(e)}): Hub adapters are not listed; local adapters "
                               "are served as usual"], offline=True)
    items, messages = [], []
    for m in models:
        card = getattr(m, "card_data", None)
        items.append(_from_model(m.id, m.tags, getattr(card, "eval_results", None), cache_dir, "search"))
    listed = {a.repo_id for a in items}
    for repo in repos:
        if repo in listed:
            continue
        try:
            readme = hf_hub_download(repo, "README.md", token=token, endpoint=endpoint, cache_dir=cache_dir)
            card = ModelCard.load(readme, ignore_metadata_errors=True)
        except Exception as e:  # noqa: BLE001
            messages.append(f"Hub adapter {repo}: card not readable ({_reason(e)})")
            continue
        a = _from_model(repo, card.data.tags, card.data.eval_results, cache_dir, "MEDPEFT_HUB_ADAPTERS")
        if all(v in ALL or getattr(a, k) in (None, v) for k, v in wanted.items()):
            items.append(a)
    if where is not None:
        items = [a for a in items if where(a)]
    return HubListing(items, messages)


def pull(repo_id: str, *, endpoint: str | None = None, token: str | None = None,
         cache_dir: str | os.PathLike | None = None, progress: Callable[[float, str], None] | None = None) -> Path:
    """Download ``repo_id``'s adapter files into the Hugging Face cache (a cached snapshot is reused); returns
    the folder. ``progress(fraction, message)`` is called as it goes (the app's progress bar). Raises
    :class:`trainer.hub.HubError` with a plain message."""
    if progress:
        progress(0.0, f"pulling {repo_id} from the Hub")
    path = pull_adapter(repo_id, cache_dir=cache_dir, token=token, endpoint=endpoint)
    if progress:
        progress(1.0, f"pulled {repo_id}")
    return path


def adapter_listing(local: list, hub: HubListing | None = None,
                    where: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """``/adapters``: every local (and already pulled) adapter's ``AdapterInfo.to_dict()``, then the Hub
    listing's repos not among them (``source: hub-listing``, card metrics, ``cached``). ``where``: keep only
    the rows it accepts (a hook for per-visitor filtering)."""
    rows = [a.to_dict() for a in local]
    have = {r["key"] for r in rows}
    rows += [h.to_dict() for h in hub or [] if h.key not in have and not any(k.startswith(h.key + "/") for k in have)]
    return [r for r in rows if where is None or where(r)]


__all__ = ["HubAdapter", "HubListing", "HubError", "adapter_listing", "pull", "search_hub"]
