"""The Train tab: fine-tune a backbone with a PEFT method on an uploaded zip of class folders (or a
registered dataset on the server), with live curves, Stop, quick HPO, a confusion matrix and a Hub
push. The work is ``trainer.jobs``'s; this module lays out the form and shows the progress.
API: ``/methods_for_backbone``, ``/check_dataset``, ``/train`` (streams), ``/stop_training``,
``/push_adapter``, ``/download_adapter``. In public mode a visitor's runs and adapters are theirs
(``AppState.run_root``), outputs name no server folder, and on a Space a job must fit one ZeroGPU call."""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import gradio as gr

from trainer.data import DATASETS, DataError
from trainer.infer import InferenceError
from trainer.jobs import options, zerogpu
from trainer.jobs.private import duration_text
from trainer.jobs.progress import HPO_TRIAL_EPOCHS, TrainProgress, elapsed, metric_label, pct
from trainer.jobs.quick_hpo import QuickHPOJob
from trainer.jobs.runs import best_seed, new_run_dir, results_for_adapter, run_summary
from trainer.jobs.session import TrainingJob, TrainingSessions, TrainRun
from trainer.jobs.upload import UPLOAD, resolve_dataset

from .. import views
from ..errors import user_errors
from ..shared import TabContext
from ..state import ALL
from ..visitors import current_profile, scrub_paths, visitor_scoped

INTRO = ("Fine-tune a pretrained backbone on your own images with a PEFT method: upload a zip with one folder "
         "per class (PNG, JPEG or DICOM), or use a registered dataset on the server. The adapter is saved to the "
         "local store and selected on the Classify tab. The paper's picks: **SSF** for CNNs, **LoRA** for ViTs. "
         "One training runs at a time per server.")
QUEUED = ("**Another training is running; you are queued.** One training runs at a time on this server: yours "
          "starts when it finishes (your place in the queue is shown on the progress panel).")
STOP_MESSAGES = {"cancelled": "Your queued training is cancelled: it will not start.",
                 "none": "No training is running in this session.",
                 "stopping": "**Stopping:** the current step finishes, then the best validation checkpoint so far "
                             "is tested and saved."}


def registered_datasets(uploads_only: bool = False) -> list[tuple[str, str]]:
    if uploads_only:  # public mode without MEDPEFT_DATA_ROOTS: no server folder may be read
        return [("uploaded zip (above)", UPLOAD)]
    return [("uploaded zip (above)", UPLOAD)] + [
        ("image folder on the server (imagefolder)" if n == "imagefolder" else n, n)
        for n in sorted(DATASETS) if n != "csv"]  # csv needs column options: use the command line


def session_of(request: gr.Request | None) -> str:
    return TrainingSessions.session_id(getattr(request, "session_hash", None))


class TrainTab:
    def __init__(self, ctx: TabContext):
        self.ctx, self.state = ctx, ctx.state
        settings = ctx.state.settings
        self.default_backbone, self.default_method = options.default_choice()
        self.has_gpu = self.default_method == "lora"
        root = settings.train_dir or Path(tempfile.mkdtemp(prefix="medpeft-app-train-"))
        self.sessions = TrainingSessions(root)
        self.public = self.state.public
        self.uploads_only = self.public and not settings.data_roots
        self._build()
        self._wire()

    def _build(self) -> None:
        has_gpu = self.has_gpu
        with gr.Tab("Train", id="train"):
            gr.Markdown(INTRO + (" " + self.privacy_note() if self.public else ""), elem_classes="medpeft-note")
            with gr.Row(equal_height=False):
                with gr.Column(scale=5, min_width=360):
                    self.zip_in = gr.File(label="Dataset zip: one folder per class (PNG, JPEG or DICOM)",
                                          file_types=[".zip"], type="filepath", height=120, elem_id="train-zip")
                    with gr.Row():
                        self.source_dd = gr.Dropdown(registered_datasets(self.uploads_only), value=UPLOAD,
                                                     label="Dataset", scale=1,  # (uploads only: a plain refusal)
                                                     allow_custom_value=self.uploads_only)
                        self.data_dir_in = gr.Textbox(label="Data dir (registered datasets)", scale=1,
                                                      visible=not self.uploads_only,
                                                      placeholder="a folder under the server's data roots" if
                                                      self.public else "/data/HAM10000 on the server")
                    self.check_btn = gr.Button("Check dataset", variant="secondary", size="sm")
                    self.check_md = gr.Markdown(elem_classes="medpeft-note", elem_id="train-check")
                    self.backbone_dd = gr.Dropdown(options.backbone_choices(), value=self.default_backbone,
                                                   allow_custom_value=True, label="Backbone (or any timm model name)")
                    with gr.Row():
                        family = options.backbone_family(self.default_backbone)
                        self.method_dd = gr.Dropdown(options.method_names(family), value=self.default_method,
                                                     label="PEFT method", min_width=120,
                                                     allow_custom_value=True)  # checked against the backbone
                        self.lr_in = gr.Number(1e-3 if has_gpu else 5e-3, minimum=0, label="Learning rate",
                                               min_width=90)
                    with gr.Row():
                        self.epochs_in = gr.Number(10, precision=0, minimum=1, maximum=options.MAX_EPOCHS,
                                                   label="Epochs", min_width=90)
                        self.batch_in = gr.Number(32, precision=0, minimum=1, maximum=options.MAX_BATCH,
                                                  label="Batch size", min_width=90)
                        self.img_in = gr.Number(224 if has_gpu else 128, precision=0, minimum=options.IMG_RANGE[0],
                                                maximum=options.IMG_RANGE[1], label="Image size (px)", min_width=90)
                    with gr.Row(equal_height=True):
                        self.hpo_cb = gr.Checkbox(False, label="Quick HPO", scale=2,
                                                  info=f"a few short optuna trials ({HPO_TRIAL_EPOCHS} epochs each; "
                                                       "lr, weight decay, the method's own settings), then the final "
                                                       "run with the best")
                        self.trials_in = gr.Number(3, precision=0, minimum=options.TRIALS_RANGE[0],
                                                   maximum=options.TRIALS_RANGE[1], label="HPO trials", scale=1,
                                                   min_width=90)
                    self.run_name_in = gr.Textbox(label="Run name (optional)", placeholder="default: the zip's name")
                    with gr.Row():
                        self.train_btn = gr.Button("Train", variant="primary", elem_id="train-button")
                        self.stop_btn = gr.Button("Stop, keep best", variant="stop", elem_id="stop-button")
                    self.train_note = gr.Markdown(elem_classes="medpeft-note", elem_id="train-note")
                with gr.Column(scale=7, min_width=420):
                    self.status = gr.HTML(views.train_status_html("Ready", "choose a dataset and press Train"),
                                          elem_id="train-status")
                    self.curve_plot = gr.Plot(label="Validation F1 and training loss per epoch", elem_id="train-curve")
                    self.metrics_md = gr.Markdown(elem_id="train-metrics")
                    self.cm_plot = gr.Plot(label="Confusion matrix (test split)", elem_id="train-confusion")
                    self.reliability_img = gr.Image(label="Reliability diagram (test split, raw and calibrated)",
                                                    type="filepath", interactive=False, elem_id="train-reliability")
                    with gr.Accordion("Download the adapter, or push it to the Hugging Face Hub", open=False):
                        self.push_key = gr.Dropdown(views.choices(self.state.pushable()), value=None,
                                                    allow_custom_value=True, label="Adapter")
                        with gr.Row():
                            self.download_btn = gr.Button("Download adapter (zip)", variant="secondary")
                            self.download_out = gr.File(label="Adapter zip", interactive=False, height=80)
                        with gr.Row():
                            self.repo_in = gr.Textbox(label="Repo id", placeholder="your-name/medpeft-ssf-mydata",
                                                      scale=2)
                            self.token_in = gr.Textbox(label="Hugging Face token (write access; used once, not "
                                                             "stored)" + ("; not needed when signed in" if
                                                                          self.state.settings.oauth else ""),
                                                       type="password", scale=2)
                        with gr.Row():
                            self.private_cb = gr.Checkbox(True, label="Private repo")
                            self.push_btn = gr.Button("Push to the Hub", variant="secondary")
                        self.push_md = gr.Markdown(elem_classes="medpeft-note")
                    with gr.Accordion("Run details (JSON)", open=False):
                        self.run_json = gr.JSON(label="Run summary")

    def _wire(self) -> None:
        self.backbone_dd.change(self.methods_update, [self.backbone_dd], [self.method_dd],
                                api_name="methods_for_backbone", queue=False)
        self.check_btn.click(self.check_dataset, [self.zip_in, self.source_dd, self.data_dir_in], [self.check_md],
                             api_name="check_dataset", concurrency_id="check_dataset", concurrency_limit=2)
        self.train_btn.click(self.queue_note, None, [self.train_note], queue=False, api_visibility="private")
        inputs = [self.zip_in, self.source_dd, self.data_dir_in, self.backbone_dd, self.method_dd, self.hpo_cb,
                  self.trials_in, self.epochs_in, self.batch_in, self.lr_in, self.img_in, self.run_name_in]

        def wire_train():  # it updates the adapter lists of the Classify and Generate tabs
            p = self.ctx.pickers
            outputs = [self.status, self.curve_plot, self.metrics_md, self.cm_plot, self.reliability_img, self.run_json,
                       self.push_key, p.dataset_dd, p.task_dd, p.adapter_dd, p.compare_box, p.gen_adapter, p.status_md,
                       self.train_note]
            self.train_btn.click(self.train, inputs, outputs, api_name="train", concurrency_limit=1,
                                 concurrency_id="train", show_progress="full", show_progress_on=[self.curve_plot])

        self.ctx.later(wire_train)
        self.stop_btn.click(self.stop_training, None, [self.train_note], api_name="stop_training", queue=False)
        self.push_btn.click(self.push, [self.push_key, self.repo_in, self.token_in, self.private_cb], [self.push_md],
                            api_name="push_adapter", concurrency_id="push_adapter").then(
            lambda: "", None, [self.token_in], queue=False, api_visibility="private")
        self.download_btn.click(self.download, [self.push_key], [self.download_out], api_name="download_adapter",
                                concurrency_id="push_adapter")

    def privacy_note(self) -> str:
        ttl = self.state.settings.private_ttl
        keep = duration_text(ttl)
        who = ("your Hugging Face account when you sign in, else this browser session: its work ends with it"
               if self.state.settings.oauth else "this browser session: its work ends with it (a reload is a new "
               "session)")
        return (f"**Private:** on this public server your uploads, runs and adapters are visible only to {who}; "
                f"they are deleted {keep} after training. Download the adapter or push it to your Hub account to "
                "keep it.")

    # ------------------------------------------------------------------ small handlers
    def methods_update(self, backbone: str | None):
        family = options.backbone_family(backbone or self.default_backbone)
        return gr.update(choices=options.method_names(family), value=options.recommended_method(family))

    @visitor_scoped
    @user_errors("check the dataset")
    def check_dataset(self, zip_file: str | None, dataset: str | None, data_dir: str | None,
                      request: gr.Request = None) -> str:
        """Check a dataset (the uploaded zip, safely extracted, or a registered dataset on disk) without training."""
        work = self.sessions.work_dir(session_of(request))
        try:
            _, _, check = resolve_dataset(zip_file, dataset, data_dir, work, self.state.settings.data_roots,
                                          public=self.public)
        finally:
            self.sessions.remove_work(work)
        head = "**Ready to train.**" if check.ok else "**Cannot train on this dataset yet.**"
        return head + "\n\n" + "\n".join(f"- {line}" for line in check.summary().splitlines())

    def queue_note(self, request: gr.Request = None) -> str:
        return QUEUED if self.sessions.enqueue(session_of(request)) else ""

    @visitor_scoped
    def stop_training(self, request: gr.Request = None) -> str:
        """Stop this session's training after the current step (the best validation checkpoint so far is
        tested and saved), or cancel its training waiting in the queue."""
        return STOP_MESSAGES[self.sessions.stop(session_of(request))]

    @visitor_scoped
    @user_errors("download the adapter")
    def download(self, adapter_key: str | None) -> str:
        """The adapter folder (weights, config, model card) as a zip; in public mode only your own adapters."""
        import shutil
        import uuid

        adapter = self.own_adapter(adapter_key)
        stem = f"{Path(adapter.name.removeprefix('yours: ')).as_posix().replace('/', '-')}-{uuid.uuid4().hex[:8]}"
        return self.ctx.outputs.add(shutil.make_archive(str(self.ctx.outputs.folder / stem), "zip",
                                                        root_dir=adapter.folder))

    def own_adapter(self, adapter_key: str | None):
        """The adapter a visitor may download or push: their own (public mode) or any local one."""
        if not adapter_key:
            raise InferenceError("choose an adapter first (train one above)")
        adapter = self.state.get(adapter_key)
        if adapter.key not in {a.key for a in self.state.pushable()}:
            raise InferenceError(f"{adapter.name} is not one of your adapters: only adapters you trained here "
                                 "can be downloaded or pushed" if self.public else
                                 f"{adapter.name} is already on the Hub; choose a local adapter")
        return adapter

    @visitor_scoped
    def push(self, adapter_key: str | None, repo_id: str | None, token: str | None, private: bool = True,
             oauth_token: gr.OAuthToken | None = None) -> str:
        """Push your adapter to the Hugging Face Hub with its model card, with the token of your sign-in
        (where the Space offers it) or the pasted token. The token is used for this call only: never logged
        or stored."""
        from trainer.hub import push_adapter

        if not (token or "").strip() and getattr(oauth_token, "token", None):
            token = oauth_token.token
        profile = current_profile()
        if not (repo_id or "").strip() and profile is not None and adapter_key:
            repo_id = f"{profile.username}/medpeft-{adapter_key.removeprefix('private:').split('/')[0]}"

        def fail(msg: str) -> gr.Error:
            return gr.Error(msg.replace(token, "***") if token else msg, title="Could not push the adapter",
                            print_exception=False)

        repo_id = (repo_id or "").strip()
        if not repo_id:
            raise fail("enter a Hub repo id such as your-name/medpeft-ssf-mydata")
        if not (token or "").strip():
            raise fail("paste a Hugging Face token with write access (https://huggingface.co/settings/tokens); "
                       "it is used for this push only and not stored")
        try:
            adapter = self.own_adapter(adapter_key)
            url = push_adapter(adapter.folder, repo_id, private=bool(private),
                               results=results_for_adapter(adapter.folder), token=token.strip(),
                               endpoint=self.state.hub_endpoint)
        except Exception as e:  # HubError, InferenceError or a bug: a plain message without the token
            msg = str(e) or type(e).__name__
            raise fail(scrub_paths(msg) if self.public else msg) from None
        return f"Pushed **{adapter.name}** to [{url}]({url}) ({'private' if private else 'public'} repo)."

    # ------------------------------------------------------------------ training
    def privacy_keep(self) -> str:
        ttl = self.state.settings.private_ttl
        return duration_text(ttl)

    def status_html(self, run: TrainRun) -> str:
        progress = run.progress
        phase = progress.phase
        if run.stop_requested:
            phase += " · stopping after the current step (the best checkpoint so far is kept)"
        return views.train_status_html(phase, progress.detail(), progress.fraction())

    def curve(self, progress: TrainProgress):
        return views.training_curve_figure(progress.series, progress.metric, progress.epochs)

    @visitor_scoped
    @user_errors("train")
    def train(self, zip_file: str | None, dataset: str | None, data_dir: str | None, backbone: str | None,
              method: str | None, quick_hpo: bool, trials: float, epochs: float, batch_size: float, lr: float,
              img_size: float, run_name: str | None, request: gr.Request = None):
        """Fine-tune a backbone with a PEFT method on the uploaded zip (or a registered dataset), streaming
        progress; at the end the adapter is saved under <adapters dir>/trained and selectable for classification."""
        session = session_of(request)
        if self.sessions.take_cancelled(session):
            yield {self.status: views.train_status_html("Cancelled", "stopped while waiting in the queue: nothing "
                                                        "was trained"), self.train_note: ""}
            return
        dataset = (dataset or UPLOAD).strip()
        work = run = None
        finished = failed = False
        try:
            form = options.form_config(backbone=backbone, method=method, epochs=epochs, batch_size=batch_size, lr=lr,
                                       img_size=img_size, default_backbone=self.default_backbone,
                                       has_gpu=self.has_gpu)
            trials = options.hpo_trials(quick_hpo, trials)
            work = self.sessions.work_dir(session)
            reading = ("unpacking the upload safely and counting images per class" if dataset == UPLOAD
                       else f"reading {dataset} from " + ("the server's data roots" if self.public else f"{data_dir}"))
            yield {self.status: views.train_status_html("Checking the dataset", reading), self.curve_plot: None,
                   self.metrics_md: "", self.cm_plot: None, self.reliability_img: None, self.run_json: None, self.train_note: ""}
            ds_name, root, check = resolve_dataset(zip_file, dataset, data_dir, work,
                                                   self.state.settings.data_roots, public=self.public)
            if not check.ok:
                raise DataError("cannot train on this dataset:\n" + check.summary())
            if check.notes:
                gr.Warning("\n".join(check.notes), title="Dataset notes")
            stem = Path(zip_file).stem if dataset == UPLOAD and zip_file else ds_name
            run_dir = new_run_dir(self.state.run_root(), run_name, stem)
            cache = work / ".image-cache" if dataset == UPLOAD else self.sessions.root / ".image-cache"
            cfg = dataclasses.replace(form, dataset=ds_name, data_dir=str(root), output_dir=str(run_dir),
                                      cache_dir=str(cache)).validate()
            job = self.make_job(cfg, trials, work, sum(check.class_counts.values()))
            run = TrainRun(session, job, work=work, run_dir=run_dir, progress=TrainProgress(cfg.epochs, trials))
            self.sessions.start(run)
            yield {self.status: self.status_html(run), self.curve_plot: None, self.metrics_md: "",
                   self.cm_plot: None, self.reliability_img: None, self.run_json: None, self.train_note: ""}
            last, results = time.monotonic(), None
            for ev in run.follow():
                if ev["kind"] == "epoch":
                    yield {self.status: self.status_html(run), self.curve_plot: self.curve(run.progress)}
                    last = time.monotonic()
                elif ev["kind"] == "done":
                    results = ev["results"]
                    break
                elif ev["kind"] == "error":
                    failed = True
                    message = scrub_paths(ev["message"]) if self.public else ev["message"]
                    yield {self.status: views.train_status_html("Training failed", message, None, error=True)}
                    raise DataError(f"training failed: {ev['message']}")
                elif time.monotonic() - last >= 0.5:
                    yield {self.status: self.status_html(run)}
                    last = time.monotonic()
            finished = True
            if results is None:
                raise DataError("training ended without results")
            yield self.finished(results, run)
        except Exception as e:  # shown on the status panel too; user_errors makes it a plain message
            if not failed:
                yield {self.status: views.train_status_html(
                    "Could not start training" if run is None else "Training failed",
                    (scrub_paths(str(e)) if self.public else str(e)).replace(":\n", ": ").replace("\n", " · "),
                    error=True)}
            raise
        finally:
            self.sessions.end(run, finished=finished, failed=failed, work=work)

    def make_job(self, cfg, trials: int, work: Path, n_images: int):
        """The job for the form: plain or quick HPO; on a Space one ZeroGPU call sized from the epochs, the
        trials and the images (refused with the limit named when it cannot fit)."""
        import functools

        factory = (functools.partial(QuickHPOJob, cfg, trials, work / "hpo") if trials
                   else functools.partial(TrainingJob, cfg))
        return zerogpu.sized_job(factory, cfg, trials, HPO_TRIAL_EPOCHS, n_images, self.state.settings.gpu_max_s)

    def finished(self, results: dict, run: TrainRun) -> dict:
        """The result: metrics, confusion matrix, the adapter in the store and selected on the Classify tab."""
        progress, state = run.progress, self.state
        adapter_folder = (run.run_dir / results["adapter_dir"]).resolve()
        adapters = state.scan()
        key = next((a.key for a in adapters if Path(a.folder).resolve() == adapter_folder), None)
        seed = best_seed(results)
        test = seed["test"]
        names = results.get("class_names") or []
        cm = views.confusion_figure(test["confusion_matrix"], names) if "confusion_matrix" in test else None
        summary = run_summary(results, run.run_dir, key)
        md = views.train_result_markdown(results, seed, key, adapter_folder, state.adapters_dir)
        if self.public:  # name no server folder: the run by its own name, the adapter as yours
            summary.update(run_dir=run.run_dir.name, adapter_dir=results["adapter_dir"])
            md = md.replace(str(adapter_folder), state.location(adapter_folder))
            md = scrub_paths(md) + f"\n\nIt is private to you and deleted {self.privacy_keep()} after training: " \
                                   "download it or push it to your Hub account to keep it."
        metric = progress.metric
        done = ("Stopped: best checkpoint so far tested and saved" if summary["stopped_early_by_user"]
                else "Training finished")
        detail = (f"test {metric_label(metric)} {pct(test.get(metric))} · {elapsed(progress.seconds())} · "
                  "adapter selected on the Classify tab")
        p = self.ctx.pickers
        reliability = (seed.get("assessment") or {}).get("reliability")
        reliability = adapter_folder.parent / reliability if reliability else None  # beside seed_N/adapter
        if reliability is not None and reliability.is_file():  # a copy: the run folder is not served
            from PIL import Image

            with Image.open(reliability) as im:
                reliability = self.ctx.outputs.save(im.convert("RGB"), "reliability")
        else:
            reliability = None
        out = {self.status: views.train_status_html(done, detail, 1.0), self.metrics_md: md, self.cm_plot: cm,
               self.reliability_img: reliability, self.run_json: summary,
               self.push_key: gr.update(choices=views.choices(state.pushable()), value=key),
               **p.updates(state, ALL, ALL, key), p.task_dd: gr.update(value=ALL)}
        if progress.series:
            out[self.curve_plot] = self.curve(progress)
        return out
