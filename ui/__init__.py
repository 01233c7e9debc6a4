"""The MedPEFT Gradio app (Gradio lives here and nowhere else).

    from ui import build_app, launch
    launch(build_app("runs"))                 # or: python app.py [--adapters-dir runs] [--port 7860]

- ``settings.py``: every MEDPEFT_* environment variable, read once into :class:`Settings`
- ``state.py``: the adapters the app knows, the shared predictor/generator, output files, examples
- ``errors.py``: the library's typed errors -> ``gr.Error`` with a plain message
- ``views.py``: figures, HTML and Markdown shared by the tabs; ``shared.py``: what the tabs share
  while the app is built (the adapter pickers of several tabs, late event wiring)
- ``tabs/``: classify, train, generate, leaderboard, about; each builds its components and wires
  its own events, and its handlers return updates keyed by component
- ``visitors.py``: who is asking (signed-in user or browser session) for handlers that touch a
  visitor's data; ``loadtest.py``: many fresh visitors against a running app (``python -m ui.loadtest``)

Public mode (a Space, a non-loopback host, ``--public``): visitors' uploads, runs and adapters are
private and expire, server folders are confined to ``MEDPEFT_DATA_ROOTS``, no output names a server
path, Gradio keeps state for ``MEDPEFT_STATE_CAPACITY`` recent sessions and deletes its temporary
files after ``MEDPEFT_CACHE_TTL`` seconds.

May import ``trainer`` and ``adapters`` (the work is theirs: inference in ``trainer.infer``, the Train
tab's jobs in ``trainer.jobs``, results in ``trainer.study.results``). Nothing imports ``ui`` but
``app.py`` (and the tests). Research use only: not a medical device.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from trainer.infer import Generator, Predictor, create_demo_adapter  # noqa: E402

from . import views  # noqa: E402
from .settings import Settings  # noqa: E402
from .shared import TabContext  # noqa: E402
from .state import AppState, OutputFiles, lean_session_state, limit_malloc_arenas, write_examples  # noqa: E402
from .tabs.about import AboutTab  # noqa: E402
from .tabs.classify import ClassifyTab  # noqa: E402
from .tabs.generate import GenerateTab  # noqa: E402
from .tabs.leaderboard import LeaderboardTab  # noqa: E402
from .tabs.train import TrainTab  # noqa: E402

__all__ = ["Settings", "build_app", "launch", "main"]
log = logging.getLogger("medpeft.app")


def build_app(settings: Settings | str | os.PathLike | None = None, *, hub_repos: list[str] | None = None,
              predictor: Predictor | None = None, generator: Generator | None = None, create_demo: bool = True,
              sd_base: str | None = None, results_dirs: list[str] | None = None,
              examples_dir: str | os.PathLike | None = None, hub_endpoint: str | None = None,
              train_dir: str | os.PathLike | None = None) -> gr.Blocks:
    """The Gradio app from ``settings`` (default: :meth:`Settings.from_env`), or from an adapters folder
    and keyword overrides of the environment's settings. With ``create_demo`` and no adapter anywhere,
    a demo adapter (ImageNet classes) is written to the adapters folder. ``train_dir``: the Train tab's
    scratch folder (per-session upload extraction; default a new temporary folder)."""
    if not isinstance(settings, Settings):
        settings = Settings.from_env(adapters_dir=settings, hub_repos=hub_repos, sd_base=sd_base,
                                     results_dirs=results_dirs, examples_dir=examples_dir,
                                     hub_endpoint=hub_endpoint, train_dir=train_dir, create_demo=create_demo)
    lean_session_state()  # a session costs what it changed, not the whole layout (README: Public mode)
    if settings.is_public:  # many visitors' inference threads: bounded native memory (README: Public mode)
        limit_malloc_arenas()
    state = AppState(settings, predictor or Predictor(memory_mb=settings.serve_memory_mb),
                     generator or Generator())
    load_adapters(state)
    if state.private is not None:
        state.private.start_sweeper()
    examples_dir = settings.examples_dir or Path(tempfile.gettempdir()) / "medpeft-app-examples"
    outputs = OutputFiles(tempfile.mkdtemp(prefix="medpeft-app-outputs-"))
    ttl = max(1, int(settings.cache_ttl))
    with gr.Blocks(title="MedPEFT", analytics_enabled=False, delete_cache=(max(1, min(ttl, 600)), ttl)) as demo:
        with gr.Column(elem_classes="medpeft-header"):
            gr.Markdown("# MedPEFT\nParameter-efficient fine-tuning for medical image analysis, after Dutt et al. "
                        f"(MIDL 2024). {views.DISCLAIMER}")
            if settings.oauth:  # the Space sets hf_oauth: true: visitors may sign in (their work follows them)
                gr.LoginButton()
        ctx = TabContext(demo, state, outputs, write_examples(examples_dir))
        with gr.Tabs():
            tabs = {"classify": ClassifyTab(ctx), "train": TrainTab(ctx), "generate": GenerateTab(ctx),
                    "leaderboard": LeaderboardTab(ctx), "about": AboutTab(ctx)}
        for wire in ctx.deferred:  # events that update components of several tabs
            wire()
    demo.queue(default_concurrency_limit=2, max_size=64)
    demo.medpeft_state = state  # for tests and scripts
    demo.medpeft_tabs = tabs
    demo.medpeft_allowed_paths = [str(examples_dir)]  # outputs are copied into Gradio's cache, not served here
    demo.medpeft_settings = settings
    return demo


def load_adapters(state: AppState) -> None:
    """Scan for adapters (writing the demo adapter when there is none and the settings allow it) and
    warm the first one in the background, so that the first click is quick."""
    found = state.scan()
    if state.settings.create_demo and not state.classifiers():
        try:
            create_demo_adapter(state.adapters_dir)
            found = state.scan()
            where = "the adapters folder" if state.public else str(state.adapters_dir)
            found.messages.append(f"no adapters were found, so a demo adapter was created in {where} "
                                  "(ImageNet classes, not medical)")
        except Exception as e:
            log.exception("could not create the demo adapter")
            found.messages.append(f"no adapters found and the demo adapter could not be created: {e}")
    for m in found.messages:
        log.warning(m)
    first = next(iter(state.classifiers()), None)
    if first is None:
        return

    def warm():
        try:
            from PIL import Image

            state.predictor.predict(first, Image.new("RGB", (256, 256), (128, 128, 128)))
        except Exception as e:  # reported again, plainly, when the user picks it
            log.warning("could not pre-load %s: %s", first.key, e)

    threading.Thread(target=warm, name="medpeft-warm", daemon=True).start()


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, **kwargs):
    """Launch with the app's theme and safe defaults (errors shown as plain messages; Gradio keeps the
    state of ``MEDPEFT_STATE_CAPACITY`` recent sessions)."""
    settings = getattr(demo, "medpeft_settings", None)
    kwargs.setdefault("state_session_capacity", settings.state_capacity if settings else 1000)
    return demo.launch(server_name=host, server_port=port, share=share, show_error=True, theme=views.theme(),
                       css=views.CSS, allowed_paths=list(getattr(demo, "medpeft_allowed_paths", [])),
                       max_file_size="200mb", footer_links=["api"], **kwargs)


def main(argv: list[str] | None = None) -> None:
    env = Settings.from_env()
    p = argparse.ArgumentParser(description="MedPEFT Gradio app")
    p.add_argument("--adapters-dir", default=str(env.adapters_dir),
                   help="folder scanned for adapters (medpeft.json) and results (results.json)")
    p.add_argument("--host", default=env.host)
    p.add_argument("--port", type=int, default=env.port)
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (implies --public)")
    p.add_argument("--public", action="store_true",
                   help="public mode on any address: visitors' data private, server folders confined")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = env.replace(adapters_dir=Path(args.adapters_dir), host=args.host, port=args.port)
    if args.public or args.share:
        settings = settings.replace(public=True)
    demo = build_app(settings)
    launch(demo, args.host, args.port, args.share)
