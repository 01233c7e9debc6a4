"""What the app holds while it serves: the adapters it knows (rescanned on request), the shared
predictor and generator, the settings, and the unique output files it hands to the browser."""
from __future__ import annotations

import collections
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path

import pandas as pd

from trainer.infer import AdapterList, Generator, InferenceError, Predictor, find_adapters
from trainer.study import results as R

from .settings import Settings

log = logging.getLogger("medpeft.app")
ALL = "All"


class AppState:
    """The adapters the app knows (rescanned on request) and the shared predictor/generator."""

    def __init__(self, settings: Settings, predictor: Predictor, generator: Generator):
        self.settings = settings
        self.predictor = predictor
        self.generator = generator
        self._lock = threading.Lock()
        self.adapters = AdapterList()
        self.pulled: list[str] = []  # Hub repos pulled from the Classify tab's Hub search (issue 21)

    @property
    def adapters_dir(self) -> Path:
        return self.settings.adapters_dir

    @property
    def hub_repos(self) -> list[str]:
        return list(dict.fromkeys([*self.settings.hub_repos, *self.pulled]))

    @property
    def hub_endpoint(self) -> str | None:
        return self.settings.hub_endpoint

    def scan(self) -> AdapterList:
        found = find_adapters(self.adapters_dir, self.hub_repos, endpoint=self.hub_endpoint)
        with self._lock:
            self.adapters = found
        return found

    def classifiers(self) -> list:
        return [a for a in self.adapters if a.task != "generation"]

    def generators(self) -> list:
        return [a for a in self.adapters if a.task == "generation"]

    def local_classifiers(self) -> list:
        return [a for a in self.classifiers() if a.source == "local"]

    def get(self, key: str | None, kind: str = "classification"):
        if not key:
            raise InferenceError("choose an adapter first" if self.classifiers() else
                                 f"no adapters found in {self.adapters_dir}: train one with python -m trainer")
        a = self.adapters.get(key)
        if a is None:
            raise InferenceError(f"unknown adapter {key!r}: press 'Rescan adapters' or choose one from the list")
        if kind == "classification" and a.task == "generation":
            raise InferenceError(f"{a.name} is a text-to-image adapter: use it on the Generate tab")
        return a

    def filtered(self, dataset: str | None, task: str | None) -> list:
        return [a for a in self.classifiers() if (not dataset or dataset == ALL or a.dataset == dataset)
                and (not task or task == ALL or a.task == task)]

    def datasets(self) -> list[str]:
        return [ALL] + sorted({a.dataset for a in self.classifiers()})

    def default_key(self) -> str | None:
        cls = self.classifiers()
        return cls[0].key if cls else None

    def result_rows(self) -> pd.DataFrame:
        return R.all_rows([self.adapters_dir, *self.settings.results_dirs])


def write_examples(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """Real example images written once: CT and MR DICOM from pydicom's test files, a retinal
    fundus photograph from scikit-image. Returns (path, label) pairs; missing sources are skipped."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    try:
        import pydicom.examples

        for name, label in (("ct", "CT slice (DICOM)"), ("mr", "MR slice (DICOM)")):
            dst = folder / f"{name}_small.dcm"
            if not dst.exists():
                shutil.copyfile(pydicom.examples.get_path(name), dst)
            out.append((str(dst), label))
    except Exception as e:  # pragma: no cover - pydicom is a requirement
        log.warning("DICOM examples unavailable: %s", e)
    try:
        dst = folder / "retina.png"
        if not dst.exists():
            from PIL import Image
            from skimage import data

            Image.fromarray(data.retina()).resize((512, 512), Image.BICUBIC).save(dst)
        out.append((str(dst), "retinal fundus photo (PNG)"))
    except Exception as e:
        log.warning("retina example unavailable (scikit-image): %s", e)
    return out


class OutputFiles:
    """Output images as unique PNG files (the newest ``keep`` are kept).

    Returning PIL images would make gradio write each one to a path named by its content hash,
    rewriting the same file in place when concurrent requests produce the same image while
    another response is still streaming it (a truncated download). A unique file per response
    is copied into gradio's cache atomically instead.
    """

    def __init__(self, folder: str | os.PathLike, keep: int = 512, min_side: int = 192):
        self.min_side = min_side
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._files: collections.deque[Path] = collections.deque()
        self._lock = threading.Lock()

    def save(self, image, stem: str) -> str | None:
        if image is None:
            return None
        path = self.folder / f"{stem}-{uuid.uuid4().hex[:12]}.png"
        if min(image.size) < self.min_side:  # tiny model inputs: enlarge for display, pixels kept (nearest)
            scale = -(-self.min_side // min(image.size))
            image = image.resize((image.width * scale, image.height * scale), resample=0)
        image.save(path, format="PNG")
        with self._lock:
            self._files.append(path)
            while len(self._files) > self.keep:
                self._files.popleft().unlink(missing_ok=True)
        return str(path)
