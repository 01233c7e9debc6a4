"""ZeroGPU: the app's GPU work as plain functions under ``spaces.GPU(duration=...)`` on a Hugging Face
Space, and as they are anywhere else (``spaces`` is imported only when ``SPACE_ID`` is set, so
nothing changes off a Space and the package need not be installed there).

ZeroGPU runs a decorated call in a worker process that holds the GPU for at most ``duration``
seconds; arguments and results cross that boundary, so the functions here take plain values
(an adapter's info, a PIL image, numbers) and find the shared predictor/generator by a registered
id. Durations: classification with Grad-CAM and compare are short and fixed per image/adapter,
generation scales with the steps, a Train-tab job is estimated from its epochs, trials and images
(:func:`estimate_train_seconds`); a job over the limit is refused up front (:func:`check_fits`)."""
from __future__ import annotations

import importlib
import logging
import math
import os
from typing import Any, Callable

from ..config import ConfigError

log = logging.getLogger("medpeft.zerogpu")
CLASSIFY_S = 30
COMPARE_S_PER_ADAPTER = 10
GENERATE_S = 20
GENERATE_S_PER_STEP = 1.5
DEFAULT_LIMIT_S = 120
_WORKERS: dict[int, Any] = {}


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID", "").strip())


def spaces_module():
    """The ``spaces`` package on a Space (None elsewhere, or when it is not installed there)."""
    if not on_space():
        return None
    try:
        return importlib.import_module("spaces")
    except Exception as e:  # a Space without the package: run as is, say so once
        log.warning("the 'spaces' package could not be imported (%s): GPU work runs without ZeroGPU", e)
        return None


def gpu(duration: int | Callable[..., int]) -> Callable:
    """``spaces.GPU(duration=duration)`` on a Space, else the function itself. ``duration``: seconds, or a
    function of the call's arguments returning seconds (ZeroGPU's dynamic duration)."""

    def deco(fn: Callable) -> Callable:
        fn.gpu_duration = duration
        spaces = spaces_module()
        if spaces is None:
            return fn
        wrapped = spaces.GPU(duration=duration)(fn)
        try:
            wrapped.gpu_duration = duration
        except AttributeError:
            pass
        return wrapped

    return deco


def register(worker: Any) -> int:
    """Make a predictor or generator reachable from GPU calls by an id (a plain, picklable value)."""
    _WORKERS[id(worker)] = worker
    return id(worker)


def _worker(worker_id: int):
    return _WORKERS[worker_id]


# ------------------------------------------------------------------------------------ inference
@gpu(duration=CLASSIFY_S)
def classify(predictor_id: int, adapter, image, gradcam: bool = True):
    """(prediction, Grad-CAM image or None) of ``image`` through ``adapter``."""
    predictor = _worker(predictor_id)
    pred = predictor.predict(adapter, image)
    heat = predictor.explain(adapter, image, list(pred.probs).index(pred.top[0])) if gradcam else None
    return pred, heat


def _compare_seconds(predictor_id: int, adapters, image) -> int:
    return min(DEFAULT_LIMIT_S, COMPARE_S_PER_ADAPTER * max(1, len(adapters)) + 10)


@gpu(duration=_compare_seconds)
def compare(predictor_id: int, adapters, image) -> list:
    """The predictor's ``compare`` (one result per adapter, with its error: one failing adapter does not
    hide the others) in one GPU call."""
    return _worker(predictor_id).compare(list(adapters), image)


def generate_seconds(generator_id: int, prompt: str, base: str, adapter_dir, steps: int = 25, *args, **kwargs) -> int:
    return int(GENERATE_S + GENERATE_S_PER_STEP * max(1, int(steps)))


@gpu(duration=generate_seconds)
def generate(generator_id: int, prompt: str, base: str, adapter_dir: str | None, steps: int, guidance: float,
             seed: int):
    return _worker(generator_id).generate(prompt, base, adapter_dir, steps, guidance, seed)


# ------------------------------------------------------------------------------------ training
SECONDS_PER_IMAGE = {"vit": 1 / 250, "cnn": 1 / 700}  # fwd+bwd at 224 px on a ZeroGPU slice
OVERHEAD_S = 30  # loading the backbone, decoding images, testing


def estimate_train_seconds(n_images: int, epochs: int, trials: int = 0, trial_epochs: int = 2, img_size: int = 224,
                           family: str = "cnn") -> int:
    """GPU seconds a Train-tab job needs, roughly: every epoch passes over all images (training split plus
    the validation pass), scaled by image area; quick-HPO trials add their epochs."""
    per_image = SECONDS_PER_IMAGE.get(family, SECONDS_PER_IMAGE["vit"]) * (img_size / 224) ** 2
    passes = epochs + trials * min(epochs, trial_epochs)
    return int(math.ceil(OVERHEAD_S + passes * n_images * per_image * 1.2))


def check_fits(seconds: int, limit_s: int) -> None:
    """A job longer than one ZeroGPU call allows is refused with a message naming the limit."""
    if limit_s and seconds > limit_s:
        raise ConfigError(f"this training needs about {seconds} s of GPU time, more than the {limit_s} s ZeroGPU "
                          "allows per job on this Space: use fewer epochs, fewer HPO trials, smaller images or a "
                          "smaller dataset, or train with `python -m trainer` on your own GPU")


def sized_job(job_factory: Callable, cfg, trials: int, trial_epochs: int, n_images: int, limit_s: int):
    """``job_factory()`` off a Space; on a Space the job's GPU seconds are estimated and checked against
    ``limit_s`` (:func:`check_fits`), and with ZeroGPU it runs as one GPU call (:class:`ZeroGPUJob`)."""
    if not on_space():
        return job_factory()
    from adapters.backbones import backbone_family

    seconds = estimate_train_seconds(n_images, cfg.epochs, trials, trial_epochs, cfg.img_size,
                                     backbone_family(cfg.backbone))
    check_fits(seconds, limit_s)
    return ZeroGPUJob(job_factory, seconds) if spaces_module() is not None else job_factory()


def _train_seconds(job_factory: Callable, seconds: int):
    return int(seconds)


@gpu(duration=_train_seconds)
def train_events(job_factory: Callable, seconds: int):
    """Run a Train-tab job (``job_factory()`` builds it) and yield its events; on ZeroGPU this runs in the
    GPU worker for at most ``seconds``."""
    job = job_factory().start()
    yield from job.events()


class ZeroGPUJob:
    """A Train-tab job run by :func:`train_events` (in the ZeroGPU worker on a Space), with the
    interface the Train tab uses (``start``, ``stop``, ``stopped``, ``events``). A Stop cannot reach
    the worker: it ends the stream (nothing is kept) and says so."""

    def __init__(self, job_factory: Callable, seconds: int):
        self.job_factory, self.seconds = job_factory, int(seconds)
        self._stopped = False
        self._events = None
        self.error: str | None = None
        self.results: dict | None = None

    def start(self) -> "ZeroGPUJob":
        return self

    def stop(self) -> None:
        self._stopped = True

    @property
    def stopped(self) -> bool:
        return self._stopped

    def events(self, poll: float = 0.5):
        if self._events is not None:  # the stream runs once (a drain after a lost client ends at once)
            return
        self._events = train_events(self.job_factory, self.seconds)
        for event in self._events:
            if event.get("kind") == "done":
                self.results = event.get("results")
            yield event
            if self._stopped and event.get("kind") not in ("done", "error"):
                self._events.close()
                self.error = "stopped: on ZeroGPU a stopped training keeps nothing"
                yield {"kind": "error", "message": self.error}
                return
