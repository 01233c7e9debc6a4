"""Training from a web page, without the web: one background training job with live progress and a
Stop that keeps the best checkpoint so far, and the sessions around it (one training at a time,
a queue whose waiting runs can be cancelled, a scratch folder per run, cleanup when a client leaves).

    sessions = TrainingSessions(scratch_root)
    run = TrainRun(session, TrainingJob(cfg), work=sessions.work_dir(session), run_dir=out, progress=...)
    sessions.start(run)
    for event in run.follow(): ...       # progress updated, Stop bookkeeping done
    sessions.end(run, finished=True)
"""
from __future__ import annotations

import queue
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..data import DataError


def safe_run_name(text: str | None) -> str:
    """``text`` as a folder name: letters, digits, ``_.-`` only, at most 60 characters ("" if none left)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", (text or "").strip()).strip("-.")
    return name[:60]


class TrainingJob:
    """One training run in a background thread. ``events()`` yields progress dicts:
    ``{"kind": "epoch", "epoch", "train_loss", "val": {...}}``, ``{"kind": "done", "results"}`` or
    ``{"kind": "error", "message"}``. ``stop()`` ends training after the current step; the best
    validation checkpoint so far is tested and saved."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.results: dict[str, Any] | None = None
        self.error: str | None = None

    def start(self) -> "TrainingJob":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def put(self, event: dict) -> None:
        self._events.put(event)

    def fail(self, e: Exception) -> None:
        """Report ``e`` as the job's error event (a message for the user; the server keeps serving)."""
        self.error = str(e) if isinstance(e, (DataError, ValueError)) else f"{type(e).__name__}: {e}"
        self.put({"kind": "error", "message": self.error})

    def _run(self) -> None:
        from ..loops.classify import run

        try:
            self.results = run(self.cfg, progress=self.put, stop=self._stop)
            self.put({"kind": "done", "results": self.results})
        except Exception as e:
            self.fail(e)

    def events(self, poll: float = 0.5):
        while True:
            try:
                event = self._events.get(timeout=poll)
            except queue.Empty:
                if not self._thread.is_alive() and self._events.empty():
                    return
                yield {"kind": "tick", "time": time.time()}
                continue
            yield event
            if event["kind"] in ("done", "error"):
                return


class TrainRun:
    """One session's running job, its scratch folder and run folder. A Stop before the first
    training step waits for that step (a checkpoint must exist to be kept); each HPO trial and the
    final run wait for their own first step again."""

    def __init__(self, session: str, job: TrainingJob, work: Path | None = None, run_dir: Path | None = None,
                 progress=None):
        self.session, self.job, self.work, self.run_dir, self.progress = session, job, work, run_dir, progress
        self.stop_requested = False
        self.stepped = False
        self._lock = threading.Lock()

    def request_stop(self) -> None:
        with self._lock:
            self.stop_requested = True
            if self.stepped:
                self.job.stop()

    def on_step(self) -> None:
        with self._lock:
            self.stepped = True
            if self.stop_requested and not self.job.stopped:
                self.job.stop()

    def new_run(self) -> None:
        """An HPO trial or the final run starts: a Stop waits for its first step again."""
        with self._lock:
            self.stepped = False

    def follow(self):
        """The job's events, with Stop bookkeeping done and ``progress`` (a TrainProgress) updated."""
        for event in self.job.events():
            kind = event["kind"]
            if kind == "step":
                self.on_step()
            elif kind in ("trial", "final"):
                self.new_run()
            if self.progress is not None:
                self.progress.update(event)
            yield event


class TrainingSessions:
    """Who trains and who waits. One training runs at a time (the web server's queue enforces it;
    this tracks it); a session waiting in that queue can cancel; scratch folders live below ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._runs: dict[str, TrainRun] = {}  # session -> its running job
        self._active: list[TrainRun] = []
        self._queued: dict[str, str] = {}  # session -> "queued" | "cancel" (a Stop while waiting)

    @staticmethod
    def session_id(raw: str | None) -> str:
        return safe_run_name(raw) or "anonymous"

    def work_dir(self, session: str) -> Path:
        """A fresh per-session scratch folder (zip extraction, image cache, HPO trials)."""
        folder = self.root / session / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        return folder

    @staticmethod
    def remove_work(folder: Path | None) -> None:
        if folder is None:
            return
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.parent.rmdir()  # the session folder, once empty
        except OSError:
            pass

    def busy(self) -> bool:
        with self._lock:
            return bool(self._active)

    def enqueue(self, session: str) -> bool:
        """A session pressed Train: True (and remembered as waiting) when another training is running."""
        with self._lock:
            if self._active:
                self._queued[session] = "queued"
                return True
            return False

    def take_cancelled(self, session: str) -> bool:
        """The session's turn came: True when it cancelled while waiting (then it must not train)."""
        with self._lock:
            return self._queued.pop(session, None) == "cancel"

    def stop(self, session: str) -> str:
        """Stop the session's training (``"stopping"``), cancel its waiting one (``"cancelled"``), or
        ``"none"`` when it has neither."""
        with self._lock:
            run = self._runs.get(session)
            if run is None and self._queued.get(session) == "queued":
                self._queued[session] = "cancel"
                return "cancelled"
        if run is None:
            return "none"
        run.request_stop()
        return "stopping"

    def start(self, run: TrainRun) -> None:
        with self._lock:
            self._runs[run.session] = run
            self._active.append(run)
        run.job.start()

    def end(self, run: TrainRun | None, finished: bool = False, failed: bool = False, work: Path | None = None) -> None:
        """Forget the run and clean up. A run that neither finished nor failed lost its client: it is
        stopped, and its folders are cleaned once the job ends (an incomplete run folder is removed)."""
        work = work if run is None else run.work
        if run is None:
            self.remove_work(work)
            return
        with self._lock:
            if self._runs.get(run.session) is run:
                del self._runs[run.session]
            if run in self._active:
                self._active.remove(run)
        if not finished and not failed:
            run.job.stop()

            def drain(run=run):
                for event in run.job.events():
                    if event["kind"] == "error" and run.run_dir is not None:
                        shutil.rmtree(run.run_dir, ignore_errors=True)  # an incomplete run: no adapter in it
                self.remove_work(run.work)

            threading.Thread(target=drain, name="medpeft-train-cleanup", daemon=True).start()
            return
        if failed and run.run_dir is not None:
            shutil.rmtree(run.run_dir, ignore_errors=True)  # an incomplete run: no adapter in it
        self.remove_work(run.work)
