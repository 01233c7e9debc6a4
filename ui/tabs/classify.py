"""The Classify tab: an image (PNG, JPEG, TIFF, BMP or DICOM) through a chosen adapter, with the
image the model saw, a Grad-CAM heat map and a side-by-side comparison of several adapters.
API: ``/classify``, ``/compare``, ``/filter_adapters``, ``/rescan_adapters``, ``/current_adapters``,
``/adapters`` (local, pulled and Hub-listed adapters), ``/search_hub``, ``/pull_hub_adapter`` (:mod:`.hub_browser`)."""
from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr
import pandas as pd

from trainer.data import DataError, load_image
from trainer.infer import InferenceError
from trainer.infer.discover import adapter_listing
from trainer.jobs import zerogpu

from .. import views
from ..errors import user_errors
from ..shared import TabContext, adapter_status
from ..state import ALL
from ..visitors import visitor_scoped
from .hub_browser import HubBrowser

FILE_TYPES = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"]
COMPARE_COLUMNS = ["adapter", "method", "backbone", "dataset", "top class", "probability", "calibrated", "latency ms",
                   "note", "memory MB"]
"""``memory MB``: how much the app grew while that adapter was loaded and run (adapters on one shared base:
only their own tensors); the rows add up to the memory the compare used."""


def load_upload(path: str):
    """The data layer's ``load_image`` on an upload; messages name the file as uploaded, not the
    server's temporary path."""
    try:
        return load_image(path)
    except DataError as e:
        raise DataError(str(e).replace(str(path), Path(path).name)) from None


class ClassifyTab:
    def __init__(self, ctx: TabContext):
        self.ctx, self.state, self.files = ctx, ctx.state, ctx.outputs
        state, examples = ctx.state, ctx.examples
        with gr.Tab("Classify", id="classify"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=5):
                    self.image_in = gr.File(label="Image: PNG, JPEG, TIFF, BMP or DICOM (.dcm)",
                                            file_types=FILE_TYPES, type="filepath", height=140,
                                            elem_id="image-input")
                    if examples:
                        gr.Examples(examples=[[p] for p, _ in examples], inputs=[self.image_in],
                                    example_labels=[lbl for _, lbl in examples],
                                    label="Examples: real CT/MR DICOM (pydicom) and a fundus photo (scikit-image)")
                    with gr.Row():
                        self.dataset_dd = gr.Dropdown(state.datasets(), value=ALL, label="Dataset", scale=1)
                        self.task_dd = gr.Dropdown([ALL, "classification", "multilabel"], value=ALL, label="Task",
                                                   scale=1)
                    self.adapter_dd = gr.Dropdown(views.choices(state.classifiers()), value=state.default_key(),
                                                  label="Adapter (name · method · backbone · test F1 · trainable)",
                                                  allow_custom_value=True, elem_id="adapter-dropdown")
                    self.gradcam_cb = gr.Checkbox(value=True, label="Grad-CAM heat map for the top class")
                    with gr.Row():
                        self.classify_btn = gr.Button("Classify", variant="primary", elem_id="classify-button")
                        self.rescan_btn = gr.Button("Rescan adapters", variant="secondary")
                    self.status_md = gr.Markdown(adapter_status(state), elem_classes="medpeft-note")
                with gr.Column(scale=6):
                    self.label_out = gr.Label(num_top_classes=5, label="Prediction", elem_id="prediction")
                    with gr.Row():
                        self.seen_out = gr.Image(label="Model input", type="filepath", height=260, format="png",
                                                 interactive=False)
                        self.cam_out = gr.Image(label="Grad-CAM (top class)", type="filepath", height=260,
                                                format="png", interactive=False)
                    self.details_out = gr.Markdown(elem_classes="medpeft-note")
            with gr.Accordion("Compare adapters on the same image", open=False):
                self.compare_box = gr.CheckboxGroup(views.choices(state.classifiers()), label="Adapters to compare")
                self.compare_btn = gr.Button("Compare", variant="secondary")
                self.compare_out = gr.Dataframe(label="Comparison", interactive=False, wrap=True,
                                                column_widths=["18%", "8%", "15%", "9%", "12%", "8%", "7%", "8%", "9%", "6%"])
            self.hub = HubBrowser(ctx)
        p = ctx.pickers
        p.dataset_dd, p.task_dd, p.adapter_dd, p.compare_box, p.status_md = (
            self.dataset_dd, self.task_dd, self.adapter_dd, self.compare_box, self.status_md)
        self.wire()

    # ------------------------------------------------------------------ events
    def wire(self) -> None:
        self.classify_btn.click(self.classify, [self.image_in, self.adapter_dd, self.gradcam_cb],
                                [self.label_out, self.seen_out, self.cam_out, self.details_out], api_name="classify")
        self.compare_btn.click(self.compare, [self.image_in, self.compare_box], [self.compare_out],
                               api_name="compare")
        gr.on([self.dataset_dd.change, self.task_dd.change], self.filter_adapters,
              [self.dataset_dd, self.task_dd, self.adapter_dd], [self.adapter_dd], api_name="filter_adapters",
              queue=False)
        inputs = [self.dataset_dd, self.task_dd, self.adapter_dd]

        def wire_rescan():  # the Generate tab's adapter list exists now (and gr.api must be outside gr.Tabs)
            gr.api(self.list_adapters, api_name="adapters")
            outputs = self.ctx.pickers.outputs()
            self.rescan_btn.click(self.rescan, inputs, outputs, api_name="rescan_adapters")
            self.ctx.demo.load(functools.partial(self.rescan, scan=False), inputs, outputs,
                               api_name="current_adapters", queue=False)

        self.ctx.later(wire_rescan)

    # ------------------------------------------------------------------ handlers
    @visitor_scoped
    @user_errors("classify the image")
    def classify(self, file: str | None, adapter_key: str | None, gradcam: bool = True) -> dict:
        if not file:
            raise InferenceError("upload an image (PNG, JPEG, TIFF, BMP) or a DICOM file first")
        state = self.state
        adapter = state.get(adapter_key)
        image = load_upload(file)
        pred, heat = zerogpu.classify(zerogpu.register(state.predictor), adapter, image, bool(gradcam))  # GPU
        lm = state.predictor.load(adapter)
        top, p = pred.top
        details = [f"**{adapter.name}**: {adapter.method} on {adapter.backbone} ({adapter.dataset}, {adapter.task})",
                   f"top class **{top}** ({100 * p:.1f}%), {pred.latency_ms:.0f} ms "
                   f"(preprocessing + forward, {'merged weights' if lm.merged else 'on the shared base'})"]
        if lm.note:
            details.append(lm.note)
        if adapter.is_demo:
            details.insert(0, "⚠️ **Demo adapter: ImageNet classes, not medical.** Train a real adapter with "
                              "`python -m trainer` (see About).")
        if adapter.task == "multilabel":
            details.append("multi-label: independent sigmoid probabilities (they need not sum to 1)")
        details.append(views.calibration_text(lm.config) if pred.calibrated else
                       "probabilities are **not calibrated** (raw softmax / sigmoid; this adapter has no temperature)")
        details.append(views.DISCLAIMER)
        return {self.label_out: pred.probs, self.seen_out: self.files.save(pred.seen, "input"),
                self.cam_out: self.files.save(heat, "gradcam"), self.details_out: "\n\n".join(details)}

    @visitor_scoped
    @user_errors("compare adapters")
    def compare(self, file: str | None, adapter_keys: list[str] | None) -> pd.DataFrame:
        if not file:
            raise InferenceError("upload an image first")
        if not adapter_keys:
            raise InferenceError("tick at least one adapter to compare")
        image = load_upload(file)
        known, rows = [], {}
        for i, key in enumerate(adapter_keys):
            try:
                known.append((i, self.state.get(key)))
            except InferenceError as e:  # an unknown key gets its own row; the others still run
                rows[i] = {"adapter": key, "note": f"error: {e}"}
        # one call: one preprocessing pass for the adapters of one backbone, all on its shared base
        compared = zerogpu.compare(zerogpu.register(self.state.predictor), [a for _, a in known], image)  # GPU
        for (i, adapter), res in zip(known, compared):
            row = {"adapter": adapter.name, "method": adapter.method, "backbone": adapter.backbone,
                   "dataset": adapter.dataset, "memory MB": round(res.memory_bytes / 2 ** 20, 1)}
            if res.prediction is not None:
                top, p = res.prediction.top
                row.update({"top class": top, "probability": round(p, 4), "calibrated": res.prediction.calibrated,
                            "latency ms": round(res.prediction.latency_ms, 1),
                            "note": "demo: ImageNet classes" if adapter.is_demo else ""})
            else:
                row.update({"top class": "", "probability": None, "calibrated": None, "latency ms": None,
                            "note": f"error: {res.error}"})
            rows[i] = row
        rows = [rows[i] for i in range(len(adapter_keys))]
        return pd.DataFrame(rows, columns=COMPARE_COLUMNS)

    @visitor_scoped
    def filter_adapters(self, dataset: str, task: str, current: str | None):
        subset = self.state.filtered(dataset, task)
        keys = [a.key for a in subset]
        return gr.update(choices=views.choices(subset),
                         value=current if current in keys else (keys[0] if keys else None))

    @visitor_scoped
    def rescan(self, dataset: str, task: str, current: str | None, scan: bool = True) -> dict:
        if scan:
            self.state.scan()
        return self.ctx.pickers.updates(self.state, dataset, task, current)

    @visitor_scoped
    def list_adapters(self) -> list[dict]:
        """Rescan and list every adapter (local and pulled Hub ones) with its task, method, backbone, classes and
        test F1; then the Hub's MedPEFT adapters not pulled yet (``source: hub-listing``, card metrics)."""
        return self.adapter_listing()

    def adapter_listing(self, where=None) -> list[dict]:
        """:meth:`list_adapters` with an optional row filter ``where(row) -> bool`` (per-visitor rules)."""
        return adapter_listing(self.state.scan(), self.hub.listing(), where)
