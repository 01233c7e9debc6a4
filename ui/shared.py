"""What the tabs share while the app is built: the app state, the output files, the components that
list adapters on several tabs (kept in step after a rescan or a training), and a list of event
wirings that wait until every tab's components exist."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from trainer.jobs.private import duration_text

from . import views
from .state import ALL, AppState, OutputFiles


@dataclass
class AdapterPickers:
    """Filled in by the tabs that own them (Classify: dataset/task/adapter/compare/status; Generate:
    the generation adapter)."""
    dataset_dd: Any = None
    task_dd: Any = None
    adapter_dd: Any = None
    compare_box: Any = None
    status_md: Any = None
    gen_adapter: Any = None

    def outputs(self) -> list:
        """The components a rescan updates, in the API's order."""
        return [self.dataset_dd, self.adapter_dd, self.compare_box, self.gen_adapter, self.status_md]

    def updates(self, state: AppState, dataset: str | None, task: str | None, current: str | None) -> dict:
        """Updates for every picker after the adapter list changed (``state.adapters``)."""
        subset = state.filtered(dataset, task)
        keys = [a.key for a in subset]
        datasets = state.datasets()
        if not state.public:  # one user: keep the server-side components in step so API calls validate
            self.compare_box.choices = views.choices(state.classifiers())  # (public mode: the session's
            self.gen_adapter.choices = views.generator_choices(state.generators())  # own copy, below)
        return {self.dataset_dd: gr.update(choices=datasets, value=dataset if dataset in datasets else ALL),
                self.adapter_dd: gr.update(choices=views.choices(subset),
                                           value=current if current in keys else (keys[0] if keys else None)),
                self.compare_box: gr.update(choices=views.choices(state.classifiers()), value=[]),
                self.gen_adapter: gr.update(choices=views.generator_choices(state.generators())),
                self.status_md: adapter_status(state)}


def adapter_status(state: AppState) -> str:
    """The adapter status line; in public mode it names no server folder and counts the visitor's own."""
    if not state.public:
        return views.adapter_status(state.adapters, state.adapters_dir, bool(state.hub_repos))
    text = views.adapter_status(state.adapters, "the server's adapter folder", bool(state.hub_repos))
    text = text.replace("`the server's adapter folder`", "the server's adapter folder")
    n = len(state.private_adapters())
    ttl = state.settings.private_ttl
    keep = duration_text(ttl)
    return text + (f"; {n} of them yours (private to you, deleted {keep} after training)" if n else "")


@dataclass
class TabContext:
    demo: gr.Blocks
    state: AppState
    outputs: OutputFiles
    examples: list[tuple[str, str]]
    pickers: AdapterPickers = field(default_factory=AdapterPickers)
    deferred: list[Callable[[], None]] = field(default_factory=list)

    def later(self, wire: Callable[[], None]) -> None:
        """Wire an event once every tab is built (it updates components of other tabs)."""
        self.deferred.append(wire)
