"""Inside the Classify tab: find MedPEFT adapters on the Hugging Face Hub (search by task, dataset, backbone,
method; card metrics shown before anything is downloaded), pull one with a progress bar and use it.
API: ``/search_hub`` (task, dataset, backbone, method), ``/pull_hub_adapter`` (repo id). The listing also
reaches ``/adapters`` (``ClassifyTab.list_adapters``)."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from adapters import METHODS
from trainer.infer import InferenceError
from trainer.infer.discover import HubError, HubListing, pull, search_hub

from ..errors import user_errors
from ..shared import TabContext
from ..state import ALL
from ..visitors import visitor_scoped

COLUMNS = ["repo", "method", "backbone", "dataset", "task", "headline", "test score", "worst group", "ECE",
           "trainable", "cached"]


def listing_table(listing: HubListing) -> pd.DataFrame:
    rows = [[a.repo_id, a.method, a.backbone, a.dataset, a.task, a.headline,
             None if a.headline_value is None else round(a.headline_value, 4),
             None if a.worst_group is None else round(a.worst_group, 4), None if a.ece is None else round(a.ece, 4),
             a.trainable_params, a.cached] for a in listing]
    return pd.DataFrame(rows, columns=COLUMNS)


def listing_note(listing: HubListing) -> str:
    if listing.offline:
        return listing.messages[0]
    text = f"{len(listing)} MedPEFT adapter(s) on the Hub match (nothing downloaded yet)."
    return text + "".join(f"\n- {m}" for m in listing.messages)


class HubBrowser:
    def __init__(self, ctx: TabContext):
        self.ctx, self.state = ctx, ctx.state
        with gr.Accordion("Find adapters on the Hugging Face Hub", open=False):
            with gr.Row():
                self.task_dd = gr.Dropdown([ALL, "classification", "multilabel", "generation"], value=ALL,
                                           label="Task", scale=1)
                self.dataset_in = gr.Textbox(label="Dataset", placeholder="any (e.g. ham10000)", scale=1)
                self.backbone_in = gr.Textbox(label="Backbone", placeholder="any (e.g. vit_base_patch16_224)", scale=1)
                self.method_dd = gr.Dropdown([ALL] + sorted(METHODS), value=ALL, label="Method", scale=1)
            self.search_btn = gr.Button("Search the Hub", variant="secondary")
            self.table = gr.Dataframe(headers=COLUMNS, label="Hub adapters (card metrics; nothing downloaded)",
                                      interactive=False, wrap=True)
            self.note_md = gr.Markdown(elem_classes="medpeft-note")
            with gr.Row():
                self.repo_dd = gr.Dropdown([], label="Adapter to pull", allow_custom_value=True, scale=3)
                self.pull_btn = gr.Button("Pull and use", variant="primary", scale=1)
        self.search_btn.click(self.search, [self.task_dd, self.dataset_in, self.backbone_in, self.method_dd],
                              [self.table, self.note_md, self.repo_dd], api_name="search_hub")

        def wire_pull():  # the pickers of every tab exist now
            p = ctx.pickers
            self.pull_btn.click(self.pull, [self.repo_dd, p.dataset_dd, p.task_dd],
                                p.outputs() + [p.adapter_dd, self.note_md], api_name="pull_hub_adapter")

        ctx.later(wire_pull)

    def listing(self, task=None, dataset=None, backbone=None, method=None) -> HubListing:
        return search_hub(task=task, dataset=(dataset or "").strip() or None, backbone=(backbone or "").strip() or None,
                          method=method, repos=list(self.state.settings.hub_repos), endpoint=self.state.hub_endpoint)

    @visitor_scoped
    @user_errors("search the Hub")
    def search(self, task: str, dataset: str, backbone: str, method: str):
        listing = self.listing(task, dataset, backbone, method)
        return (listing_table(listing), listing_note(listing),
                gr.update(choices=[(a.label(), a.repo_id) for a in listing],
                          value=listing[0].repo_id if listing else None))

    @visitor_scoped
    @user_errors("pull the adapter")
    def pull(self, repo: str | None, dataset: str, task: str, progress=gr.Progress(track_tqdm=True)):
        repo = (repo or "").strip()
        if not repo:
            raise InferenceError("search the Hub and choose an adapter to pull first")
        try:
            pull(repo, endpoint=self.state.hub_endpoint, progress=lambda f, m: progress(f, desc=m),
                 token=False if self.state.public else None)  # public mode: never the server's own token
        except HubError as e:
            raise InferenceError(str(e)) from None
        self.state.add_pulled(repo)
        self.state.scan()
        p = self.ctx.pickers
        keys = [a.key for a in self.state.classifiers() if a.key == f"hub:{repo}" or a.key.startswith(f"hub:{repo}/")]
        updates = p.updates(self.state, ALL, ALL, keys[0] if keys else None)  # the pulled adapter selected
        updates[self.note_md] = f"pulled **{repo}** into the Hugging Face cache" + (
            "; it is selected above" if keys else " (a generation adapter: use it on the Generate tab)")
        return updates
