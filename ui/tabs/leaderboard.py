"""The Leaderboard tab: the numbers Dutt et al. 2024 report beside your own runs' results.json,
filtered, with the paper's summary (average score and rank), a Pareto plot (score vs trainable
parameters), score vs training data volume, and the methods-at-a-glance table of
``python -m trainer.perf --catalog``. API: ``/leaderboard``."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from trainer.study import plots
from trainer.study.perf.catalog import COLUMNS as CATALOG_COLUMNS, latest_table
from trainer.study import results as R
from trainer.study.fairness_views import subgroup_attributes, subgroup_view

from ..shared import TabContext

FILTERS = ("task", "backbone", "dataset", "method", "source")
PERF_DIR = Path(__file__).resolve().parents[2] / "docs" / "perf"


def catalog_table() -> tuple[str, pd.DataFrame]:
    """The newest ``python -m trainer.perf --catalog`` table shipped in docs/perf (caption, rows)."""
    source, rows = latest_table(PERF_DIR)
    if source is None:
        return ("No catalogue measurement yet: run `python -m trainer.perf --catalog --backbone vit_base_patch16_224 "
                "--json docs/perf/catalog_vit.json` on a GPU.", pd.DataFrame(columns=list(CATALOG_COLUMNS)))
    return (f"From `{Path(source).name}` (`python -m trainer.perf --catalog`): ratios to full fine-tuning measured "
            "in the same run.", pd.DataFrame(rows, columns=list(CATALOG_COLUMNS)))


def options_of(df: pd.DataFrame, col: str) -> list[str]:
    return sorted({str(v) for v in df[col].dropna()}) if len(df) else []


class LeaderboardTab:
    def __init__(self, ctx: TabContext):
        self.state = ctx.state
        rows = self.state.result_rows()
        # The tables and plots are filled when a visitor opens the tab (``tab.select``), not in the layout:
        # Gradio copies the layout's values into every session's state (see README, "Public mode").
        where = "the server's adapter folder" if self.state.public else f"`{self.state.adapters_dir}`"
        with gr.Tab("Leaderboard", id="leaderboard") as tab:
            gr.Markdown("F1 macro (%, mean ± std) per method: the numbers Dutt et al. 2024 report, and your "
                        f"own runs (every `results.json` below {where}). FID for generation "
                        "(lower is better). Click a column header to sort.")
            with gr.Row():
                self.filters = {col: gr.Dropdown(options_of(rows, col), multiselect=True, label=col.capitalize())
                                for col in FILTERS}
            self.refresh_btn = gr.Button("Refresh (re-read results)", variant="secondary", size="sm")
            self.board = gr.Dataframe(None, label="Results", interactive=False, wrap=True,
                                      max_height=420, show_search="search",
                                      column_widths=["8%", "8%", "9%", "9%", "6%", "9%", "10%", "8%", "7%", "10%",
                                                     "5%", "5%", "6%"])
            gr.Markdown("**Summary** (as in the paper's tables): average score over datasets and average rank "
                        "(methods ranked within each backbone × dataset; 1 = best).")
            self.summary = gr.Dataframe(None, label="Average score and rank per method",
                                        interactive=False, max_height=360, wrap=True,
                                        column_widths=["15%", "13%", "10%", "7%", "12%", "6%", "8%", "9%", "8%",
                                                       "9%"])
            attributes = subgroup_attributes(rows)
            gr.Markdown("**Subgroups** (your runs; the paper reported none): the test score of every patient "
                        "subgroup of one attribute, the gap between the best and worst group, and the worst group. "
                        "The table above shows each run's worst group over all attributes and its ECE (raw → "
                        "temperature-scaled).")
            self.attribute = gr.Dropdown(attributes, value=attributes[0] if attributes else None,
                                         label="Subgroup attribute", allow_custom_value=False)
            self.groups = gr.Dataframe(None,
                                       label="Test score per subgroup", interactive=False, wrap=True, max_height=360)
            self.pareto = gr.Plot(None, label="Score vs trainable parameters")
            self.volume = gr.Plot(None, label="Score vs training data volume", visible=False)
            caption, table = catalog_table()
            gr.Markdown("**Methods at a glance**: trainable parameters, adapter file size, peak training memory, "
                        "step time and merged inference latency of every method, each against full fine-tuning. "
                        + caption)
            self.catalog = gr.Dataframe(table, label="Methods at a glance", interactive=False, wrap=True,
                                        max_height=420)
        filters = [self.filters[c] for c in FILTERS]
        tab.select(self.view, [*filters, self.attribute], [self.board, self.summary, self.groups, self.attribute,
                                                            self.pareto, self.volume, *filters], api_visibility="private")
        gr.on([self.refresh_btn.click, self.attribute.input, *(f.input for f in filters)], self.view,
              [*filters, self.attribute], [self.board, self.summary, self.groups, self.attribute, self.pareto,
                                           self.volume, *filters], api_name="leaderboard")

    def view(self, task, backbone, dataset, method, source, attribute=None) -> dict:
        chosen = dict(zip(FILTERS, (task, backbone, dataset, method, source)))
        df = self.state.result_rows()
        d = R.filter_rows(df, **chosen)
        volume = plots.data_volume_plot(d)
        attributes = subgroup_attributes(d)
        attribute = attribute if attribute in attributes else (attributes[0] if attributes else None)
        return {self.board: R.leaderboard(d), self.summary: R.summary(d), self.pareto: plots.pareto_plot(d),
                self.groups: subgroup_view(d, attribute) if attribute else None,
                self.attribute: gr.update(choices=attributes, value=attribute),
                self.volume: gr.update(value=volume, visible=volume is not None),
                **{self.filters[c]: gr.update(choices=options_of(df, c), value=chosen[c] or []) for c in FILTERS}}
