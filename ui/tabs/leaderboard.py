"""The Leaderboard tab: the numbers Dutt et al. 2024 report beside your own runs' results.json,
filtered, with the paper's summary (average score and rank), a Pareto plot (score vs trainable
parameters) and score vs training data volume. API: ``/leaderboard``."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from trainer.study import plots
from trainer.study import results as R

from ..shared import TabContext

FILTERS = ("task", "backbone", "dataset", "method", "source")


def options_of(df: pd.DataFrame, col: str) -> list[str]:
    return sorted({str(v) for v in df[col].dropna()}) if len(df) else []


class LeaderboardTab:
    def __init__(self, ctx: TabContext):
        self.state = ctx.state
        rows = self.state.result_rows()
        with gr.Tab("Leaderboard", id="leaderboard"):
            gr.Markdown("F1 macro (%, mean ± std) per method: the numbers Dutt et al. 2024 report, and your "
                        f"own runs (every `results.json` below `{self.state.adapters_dir}`). FID for generation "
                        "(lower is better). Click a column header to sort.")
            with gr.Row():
                self.filters = {col: gr.Dropdown(options_of(rows, col), multiselect=True, label=col.capitalize())
                                for col in FILTERS}
            self.refresh_btn = gr.Button("Refresh (re-read results)", variant="secondary", size="sm")
            self.board = gr.Dataframe(R.leaderboard(rows), label="Results", interactive=False, wrap=True,
                                      max_height=420, show_search="search",
                                      column_widths=["12%", "9%", "11%", "12%", "7%", "9%", "8%", "15%", "8%", "7%"])
            gr.Markdown("**Summary** (as in the paper's tables): average score over datasets and average rank "
                        "(methods ranked within each backbone × dataset; 1 = best).")
            self.summary = gr.Dataframe(R.summary(rows), label="Average score and rank per method",
                                        interactive=False, max_height=360, wrap=True,
                                        column_widths=["15%", "13%", "10%", "7%", "12%", "6%", "8%", "9%", "8%",
                                                       "9%"])
            self.pareto = gr.Plot(plots.pareto_plot(rows), label="Score vs trainable parameters")
            volume = plots.data_volume_plot(rows)
            self.volume = gr.Plot(volume, label="Score vs training data volume", visible=volume is not None)
        filters = [self.filters[c] for c in FILTERS]
        gr.on([self.refresh_btn.click, *(f.input for f in filters)], self.view, filters,
              [self.board, self.summary, self.pareto, self.volume, *filters], api_name="leaderboard")

    def view(self, task, backbone, dataset, method, source) -> dict:
        chosen = dict(zip(FILTERS, (task, backbone, dataset, method, source)))
        df = self.state.result_rows()
        d = R.filter_rows(df, **chosen)
        volume = plots.data_volume_plot(d)
        return {self.board: R.leaderboard(d), self.summary: R.summary(d), self.pareto: plots.pareto_plot(d),
                self.volume: gr.update(value=volume, visible=volume is not None),
                **{self.filters[c]: gr.update(choices=options_of(df, c), value=chosen[c] or []) for c in FILTERS}}
