"""What the app holds while it serves: the adapters it knows (rescanned on request), the shared
predictor and generator, the settings, and the unique output files it hands to the browser.

In public mode (``settings.is_public``) the operator's adapters (the adapters folder, the Hub zoo)
are everyone's, and each visitor also sees their own private adapters (``private:<run>/...`` keys,
from :class:`trainer.jobs.private.PrivateStore`): the listing and lookup methods below read the
calling visitor from :func:`ui.visitors.current_owner`."""
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
from trainer.jobs.private import PrivateStore, duration_text
from trainer.study import results as R

from .settings import Settings
from .visitors import current_owner

log = logging.getLogger("medpeft.app")
ALL = "All"
PRIVATE_PREFIX = "private:"


class AppState:
    """The adapters the app knows (rescanned on request) and the shared predictor/generator."""

    def __init__(self, settings: Settings, predictor: Predictor, generator: Generator):
        self.settings = settings
        self.predictor = predictor
        self.generator = generator
        self._lock = threading.Lock()
        self.operator_adapters = AdapterList()  # the adapters folder and the Hub zoo: everyone's
        self.pulled: list[str] = []  # Hub repos pulled from the Classify tab's Hub search (local mode)
        # Public mode: each visitor's pulls are listed for that visitor only (recent visitors, bounded).
        self.pulled_by: collections.OrderedDict[str, list[str]] = collections.OrderedDict()
        self.private: PrivateStore | None = None
        if settings.is_public:
            import tempfile

            root = settings.private_dir or Path(tempfile.mkdtemp(prefix="medpeft-private-"))
            self.private = PrivateStore(root, ttl=settings.private_ttl)

    @property
    def public(self) -> bool:
        return self.settings.is_public

    @property
    def adapters(self) -> AdapterList:
        """The adapters the calling visitor may use: the operator's, then (public mode) their own."""
        mine = self.private_adapters() + self.pulled_adapters()
        if not mine:
            return self.operator_adapters
        keys = {a.key for a in mine}
        return AdapterList([*mine, *(a for a in self.operator_adapters if a.key not in keys)],
                           self.operator_adapters.messages)

    def add_pulled(self, repo: str) -> None:
        """Remember a Hub repo pulled from the Classify tab: for everyone in local mode, for the calling
        visitor only in public mode (another visitor never learns what was pulled)."""
        if not self.public:
            if repo not in self.pulled:
                self.pulled.append(repo)
            return
        owner = current_owner()
        if not owner:
            raise InferenceError("this server could not tell who you are: reload the page and try again")
        with self._lock:
            repos = self.pulled_by.pop(owner, [])
            self.pulled_by[owner] = repos + ([repo] if repo not in repos else [])
            while len(self.pulled_by) > max(1, self.settings.state_capacity):
                self.pulled_by.popitem(last=False)

    def pulled_adapters(self, owner: str | None = None) -> list:
        """The Hub adapters the calling visitor (or ``owner``) pulled (public mode; read from the Hub cache)."""
        owner = owner or current_owner()
        repos = self.pulled_by.get(owner or "", []) if self.public else []
        if not repos:
            return []
        return list(find_adapters(None, repos, endpoint=self.hub_endpoint))

    def private_adapters(self, owner: str | None = None) -> list:
        """The calling visitor's (or ``owner``'s) private adapters, keyed ``private:<run>/seed_N/adapter``."""
        owner = owner or current_owner()
        if self.private is None or not owner:
            return []
        folder = self.private.trained_dir(owner)
        if not folder.is_dir():
            return []
        found = find_adapters(folder, None)
        for a in found:
            a.key = PRIVATE_PREFIX + a.key
            a.name = "yours: " + a.name
        return list(found)

    def run_root(self) -> Path:
        """Where the calling visitor's Train-tab runs go: the adapters folder (local mode) or their
        private folder (public mode)."""
        if self.private is None:
            return self.adapters_dir
        owner = current_owner()
        if not owner:
            raise InferenceError("this server could not tell who you are: reload the page and try again")
        return self.private.owner_dir(owner)

    def location(self, path: str | os.PathLike) -> str:
        """How to name ``path`` to the user: as is (local mode), or without the server's folders."""
        if not self.public:
            return str(path)
        path = Path(path)
        if self.private is not None:
            owner = current_owner()
            if owner:
                try:
                    return "your private adapters: " + path.resolve().relative_to(
                        self.private.trained_dir(owner).resolve()).as_posix()
                except ValueError:
                    pass
        return path.name

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
        if self.public:  # messages name the server's folders: keep them in the log only
            for m in found.messages:
                log.warning(m)
            found.messages = [f"{len(found.messages)} adapter folder(s) or Hub repo(s) could not be read "
                              "(details in the server log)"] if found.messages else []
        with self._lock:
            self.operator_adapters = found
        return self.adapters

    def classifiers(self) -> list:
        return [a for a in self.adapters if a.task != "generation"]

    def generators(self) -> list:
        return [a for a in self.adapters if a.task == "generation"]

    def local_classifiers(self) -> list:
        return [a for a in self.classifiers() if a.source == "local"]

    def pushable(self) -> list:
        """Adapters the calling visitor may download or push: in public mode only their own."""
        if self.public:
            return [a for a in self.private_adapters() if a.task != "generation"]
        return self.local_classifiers()

    def get(self, key: str | None, kind: str = "classification"):
        if not key:
            raise InferenceError("choose an adapter first" if self.classifiers() else
                                 f"no adapters found in {self.location(self.adapters_dir)}: train one with "
                                 "python -m trainer")
        a = self.adapters.get(key)
        if a is None:
            if str(key).startswith(PRIVATE_PREFIX) and self.private is not None:
                raise InferenceError(f"unknown adapter {key!r}: private adapters are kept "
                                     f"{duration_text(self.settings.private_ttl)} and only for the visitor who "
                                     "trained them (press 'Rescan adapters')")
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
        return self.add(path)

    def add(self, path: str | os.PathLike) -> str:
        """Count a file written into ``folder`` (e.g. an adapter zip) among the newest ``keep``."""
        path = Path(path)
        with self._lock:
            self._files.append(path)
            while len(self._files) > self.keep:
                self._files.popleft().unlink(missing_ok=True)
        return str(path)


class _Discard(dict):
    """A mapping that keeps nothing (Gradio's per-session component configs, when unused)."""

    def __setitem__(self, key, value) -> None:
        pass


def lean_session_state() -> bool:
    """Make what Gradio keeps per browser session independent of the layout and of the outputs.

    Gradio (6.x) builds, for every new session, the configuration of every component of the page
    (``SessionState.config_values``: about 1.5 KB for each of this app's ~130 components, 0.2 MB a
    session) and then copies every output value into it (the adapter list with its class names:
    another 60 KB a session). That copy serves one feature only, deep links (``gr.DeepLinkButton``),
    which this app does not offer. The session's own component updates (a visitor's adapter choices),
    which Gradio does use, are kept as they are (``blocks_config``). Installed once, for the
    process; returns whether it is installed."""
    from gradio import state_holder

    cls = state_holder.SessionState
    if getattr(cls, "_medpeft_lean", False):
        return True
    if not all(hasattr(cls, m) for m in ("_update_value_in_config", "_update_config", "components")):
        log.warning("this Gradio version's SessionState is not the one lean_session_state knows: left as is")
        return False
    init = cls.__init__

    def __init__(self, blocks):
        init(self, blocks)
        if not any(type(b).__name__ == "DeepLinkButton" for b in getattr(blocks, "blocks", {}).values()):
            self.config_values = _Discard()

    def _update_value_in_config(self, key, value, _orig=cls._update_value_in_config):
        if not isinstance(self.config_values, _Discard):
            _orig(self, key, value)

    cls.__init__ = __init__
    cls._update_value_in_config = _update_value_in_config
    cls._medpeft_lean = True
    return True


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (``mallopt(M_ARENA_MAX)``, as ``MALLOC_ARENA_MAX`` would at start-up).
    Gradio runs handlers on many worker threads; each thread's inference buffers (image decoding,
    activations, Grad-CAM) otherwise land in a new arena whose freed memory is rarely returned, so
    RSS grows with every visitor (measured: 0.30 MB a session with classification, 0.07 MB with 2
    arenas; README, Public mode). Returns whether the cap was set (glibc only)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, int(arenas)))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False
