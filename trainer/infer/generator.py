"""Text-to-image for the app: one Stable Diffusion pipeline per base kept in memory, U-Net adapters of any
method switched on it (:mod:`.serving`: each method put on the shared U-Net once, with the method's own
mechanism, e.g. diffusers' ``add_adapter`` for LoRA; each adapter's tensors swapped in), and real report
texts as example prompts. A switch gives the images a fresh load of the adapter gives (same seed).

Concurrency: one generation at a time per process (a pipeline is large and its scheduler is not
re-entrant); the lock also covers the switch."""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from adapters import MethodError
from adapters.io import read_config

from .serving import AdapterServer
from .store import InferenceError


class Generator:
    """Text-to-image with :mod:`trainer.diffusion`: ``max_pipelines`` base pipelines kept (least recently
    used dropped), each with the U-Net adapters loaded on it so far."""

    def __init__(self, device: str | None = None, max_pipelines: int = 1):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.max_pipelines = max_pipelines
        self._lock = threading.RLock()
        self._pipes: OrderedDict[str, tuple[Any, AdapterServer, Any]] = OrderedDict()

    @staticmethod
    def module():
        """:mod:`trainer.diffusion` (``load_generation_pipeline``, ``sample``), looked up at call time."""
        from .. import diffusion

        return diffusion

    @staticmethod
    def check_base(base: str) -> str:
        base = (base or "").strip()
        if not base:
            raise InferenceError("no generation model: enter a Stable Diffusion pipeline (a Hugging Face Hub id "
                                 "such as an SD 1.5 repo, or a local folder saved with save_pretrained), or set "
                                 "MEDPEFT_SD_BASE before starting the app")
        path = Path(base).expanduser()
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise InferenceError(f"{base} is a folder but not a diffusers pipeline (model_index.json missing)")
            return str(path)
        if base.startswith((".", "/", "~")) or not re.fullmatch(r"[\w\-][\w.\-]*/[\w.\-]+", base):
            raise InferenceError(f"generation model {base!r} not found: it is neither a local folder nor a Hub id "
                                 "(owner/name)")
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id=base, allow_patterns=["model_index.json"])
        except Exception as e:
            raise InferenceError(f"generation model {base!r} is not available: the Hugging Face Hub could not be "
                                 f"reached and it is not in the local cache ({type(e).__name__}). Offline, use a "
                                 "local pipeline folder.") from e
        return base

    def _base_pipeline(self, base: str):
        """(pipeline, adapter server, base U-Net) of ``base``; created once (and kept while among ``max_pipelines``)."""
        gen = self.module()
        base = self.check_base(base)
        with self._lock:
            if base in self._pipes:
                self._pipes.move_to_end(base)
                return self._pipes[base]
            try:
                pipe = gen.load_generation_pipeline(base, adapter_dir=None, device=self.device)
            except InferenceError:
                raise
            except Exception as e:
                raise InferenceError(f"could not load the generation pipeline {base!r}: {type(e).__name__}: {e}") from e
            unet = pipe.unet
            device = next((p.device for p in unet.parameters()), torch.device(self.device))
            server = AdapterServer(lambda cfg: unet, lambda cfg: base, device=device,
                                   num_classes=lambda cfg: None)
            self._pipes[base] = (pipe, server, unet)
            while len(self._pipes) > self.max_pipelines:
                self._pipes.popitem(last=False)
            return pipe, server, unet

    def pipeline(self, base: str, adapter_dir: str | None):
        """The base's pipeline with ``adapter_dir``'s U-Net adapter switched on (None: the base U-Net), and
        :mod:`trainer.diffusion`. Hold no other pipeline call meanwhile (``generate`` holds the lock)."""
        gen = self.module()
        with self._lock:
            pipe, server, unet = self._base_pipeline(base)
            if adapter_dir:
                try:
                    cfg = read_config(adapter_dir)
                except MethodError as e:
                    raise InferenceError(str(e)) from e
                if cfg.task != "generation":
                    raise InferenceError(f"{Path(adapter_dir).name} is a {cfg.task} adapter (for {cfg.backbone}), not a "
                                         "text-to-image (generation) adapter")
                try:
                    served = server.load(adapter_dir, cfg)
                except InferenceError:
                    raise
                except Exception as e:
                    raise InferenceError(f"could not put the adapter {Path(adapter_dir).name} on {base!r}: "
                                         f"{type(e).__name__}: {e}") from e
                unet = server.activate(served)
            if pipe.unet is not unet:
                pipe.unet = unet
            return pipe, gen

    def memory(self) -> dict[str, int]:
        """Bytes held per kind, summed over the kept pipelines' adapter servers (the U-Net bases included)."""
        out: dict[str, int] = {}
        for _, server, _ in self._pipes.values():
            for k, v in server.memory().items():
                out[k] = out.get(k, 0) + v
        return out

    def generate(self, prompt: str, base: str, adapter_dir: str | None = None, steps: int = 25,
                 guidance: float = 7.5, seed: int = 0) -> Image.Image:
        prompt = (prompt or "").strip()
        if not prompt:
            raise InferenceError("enter a report text (prompt) to generate an image from")
        with self._lock:  # one generation at a time per process: pipelines are large and not re-entrant
            pipe, gen = self.pipeline(base, adapter_dir)
            try:
                image = gen.sample(pipe, prompt, int(steps), float(guidance), int(seed))
            except Exception as e:
                raise InferenceError(f"generation failed: {type(e).__name__}: {e}") from e
        if not isinstance(image, Image.Image):
            raise InferenceError("the generation pipeline returned no image")
        return image


def example_reports(n: int = 6, max_chars: int = 200) -> tuple[list[str], str | None]:
    """Up to ``n`` real IU X-ray report texts (the paper's prompt: impression, else findings) for
    examples, at most two of them normal studies, and a message when they are unavailable."""
    try:
        from ..data.reports import iu_reports

        reports = iu_reports()
    except Exception as e:
        return [], f"trainer.data.reports.iu_reports() failed ({type(e).__name__}: {e})"
    out, seen, normal = [], set(), 0
    for r in reports:
        text = " ".join(str(r.get("impression") or r.get("findings") or "").split())
        low = text.lower()
        if not 25 <= len(text) <= max_chars or "xxxx" in low or low in seen:  # XXXX: de-identified words
            continue
        is_normal = low.startswith(("no acute", "normal", "negative", "no active", "no evidence")) or "no acute" in low
        if is_normal and normal >= 2:
            continue
        normal += is_normal
        seen.add(low)
        out.append(text)
        if len(out) >= n:
            break
    return out, None if out else "no usable report texts found"
