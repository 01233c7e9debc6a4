"""The Generate tab: a chest X-ray from report text with Stable Diffusion, optionally through a PEFT
adapter of its U-Net (Dutt et al., Table 4). API: ``/generate``."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from trainer.infer import InferenceError, example_reports
from trainer.jobs import zerogpu

from .. import views
from ..errors import user_errors
from ..shared import TabContext
from ..visitors import visitor_scoped


class GenerateTab:
    def __init__(self, ctx: TabContext):
        self.state, self.files = ctx.state, ctx.outputs
        reports, reports_msg = example_reports()
        with gr.Tab("Generate", id="generate"):
            gr.Markdown("Generate a chest X-ray from report text with Stable Diffusion, optionally with a PEFT "
                        "adapter of its U-Net (Dutt et al., Table 4). Needs a diffusers pipeline: a Hub id "
                        "(online) or a local folder; set `MEDPEFT_SD_BASE` to pre-fill it.")
            with gr.Row(equal_height=False):
                with gr.Column(scale=5):
                    self.prompt_in = gr.Textbox(label="Report text (prompt)", lines=4,
                                                placeholder="e.g. No acute cardiopulmonary abnormality.")
                    if reports:
                        gr.Examples(examples=[[r] for r in reports], inputs=[self.prompt_in],
                                    label="Real IU chest X-ray report impressions (torchxrayvision)")
                    else:
                        gr.Markdown(f"Example reports are unavailable: {reports_msg}.", elem_classes="medpeft-note")
                    self.base_in = gr.Textbox(label="Base pipeline (Hub id or local folder)",
                                              value=self.state.settings.sd_base,
                                              placeholder="owner/stable-diffusion-model or /path/to/pipeline")
                    self.adapter_dd = gr.Dropdown(views.generator_choices(self.state.generators()), value="",
                                                  label="Generation adapter", allow_custom_value=True)
                    with gr.Row():
                        self.steps_in = gr.Slider(1, 100, value=25, step=1, label="Steps")
                        self.guidance_in = gr.Slider(0.0, 15.0, value=7.5, step=0.5, label="Guidance scale")
                        self.seed_in = gr.Number(value=0, precision=0, label="Seed")
                    self.gen_btn = gr.Button("Generate", variant="primary")
                with gr.Column(scale=5):
                    self.image_out = gr.Image(label="Generated image", type="filepath", format="png", height=420,
                                              interactive=False)
                    self.nearest_img = gr.Image(label="Nearest training image", type="filepath", height=200,
                                                interactive=False)
                    self.nearest_md = gr.Markdown()
                    gr.Markdown(views.DISCLAIMER + " Generated images are synthetic.", elem_classes="medpeft-note")
        ctx.pickers.gen_adapter = self.adapter_dd
        self.gen_btn.click(self.generate, [self.prompt_in, self.base_in, self.adapter_dd, self.steps_in,
                                           self.guidance_in, self.seed_in], [self.image_out], api_name="generate"
                           ).success(self.nearest, [self.image_out, self.adapter_dd], [self.nearest_img, self.nearest_md],
                                     api_name="nearest_training")

    @user_errors("find the nearest training image")
    def nearest(self, image: str | None, adapter_key: str | None) -> tuple[str | None, str]:
        """The generated image's nearest training image and its distance, when the adapter's training set
        is on this machine (trainer.geneval.nearest); otherwise a line saying it is not available."""
        from trainer.geneval.nearest import nearest_training

        if not image:
            return None, ""
        folder = self.state.get(adapter_key, kind="generation").folder if adapter_key else None
        result = nearest_training(image, folder)
        shown = None
        if result.get("available"):  # a copy in the app's outputs: Gradio serves only its own files
            from trainer.data.images import load_image

            shown = self.files.save(load_image(result["path"]), "nearest_training")
        return shown, views.nearest_training_markdown(result)

    @visitor_scoped
    @user_errors("generate an image")
    def generate(self, prompt: str, base: str, adapter_key: str | None, steps: float, guidance: float,
                 seed: float) -> str | None:
        adapter_dir = None
        if adapter_key:
            adapter = self.state.get(adapter_key, kind="generation")
            if adapter.task != "generation":
                raise InferenceError(f"{adapter.name} is a classification adapter, not a text-to-image one")
            adapter_dir = str(adapter.folder)
            if not (base or "").strip():  # the pipeline the adapter was trained on
                bb = adapter.config.backbone or ""
                base = str((adapter.config.training or {}).get("base_model")
                           or (bb if "/" in bb or Path(bb).expanduser().is_dir() else ""))
        image = zerogpu.generate(zerogpu.register(self.state.generator), prompt, base, adapter_dir, int(steps),
                                 float(guidance), int(seed))  # on ZeroGPU: one GPU call sized by the steps
        return self.files.save(image, "generated")
