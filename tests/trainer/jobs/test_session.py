"""The Train tab's training sessions: a background job with live progress, a Stop that keeps the best
checkpoint (also before the first step, and through TrainRun's bookkeeping), one training at a time
with a queue that can be cancelled, scratch folders cleaned up."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.backbones import TINY_CNN
from trainer.config import TrainConfig
from trainer.jobs.session import TrainingJob, TrainingSessions, TrainRun, safe_run_name

from tests.helpers import write_digits


def _cfg(data: Path, out: Path, epochs: int) -> TrainConfig:
    return TrainConfig(method="bitfit", dataset="imagefolder", data_dir=str(data), backbone=TINY_CNN,
                       pretrained=False, epochs=epochs, batch_size=16, lr=0.01, num_workers=0,
                       output_dir=str(out)).validate()


def test_job_streams_epochs_and_finishes(tmp_path):
    data = write_digits(tmp_path / "digits", per_class=6, size=32)
    job = TrainingJob(_cfg(data, tmp_path / "run", epochs=2)).start()
    events = [e for e in job.events() if e["kind"] not in ("tick", "step")]
    assert [e["kind"] for e in events] == ["epoch", "epoch", "done"], events
    assert "val" in events[0] and "train_loss" in events[0]
    assert (tmp_path / "run" / "results.json").is_file()


def test_stop_keeps_the_best_checkpoint_so_far(tmp_path):
    data = write_digits(tmp_path / "digits", per_class=6, size=32)
    job = TrainingJob(_cfg(data, tmp_path / "run", epochs=50)).start()
    seen = 0
    for event in job.events():
        if event["kind"] == "epoch":
            seen += 1
            if seen == 2:
                job.stop()
        if event["kind"] in ("done", "error"):
            break
    assert event["kind"] == "done", event
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["per_seed"][0]["epochs_run"] <= 3  # stopped, not 50 epochs
    assert results["stopped_early_by_user"] is True
    assert (tmp_path / "run" / results["adapter_dir"] / "adapter_model.safetensors").is_file()


def test_stop_before_the_first_step_still_saves_a_tested_adapter(tmp_path):
    data = write_digits(tmp_path / "digits", per_class=6, size=32)
    job = TrainingJob(_cfg(data, tmp_path / "run", epochs=50))
    job.stop()  # pressed before training even started
    job.start()
    kinds = [e["kind"] for e in job.events() if e["kind"] in ("epoch", "done", "error")]
    assert kinds == ["epoch", "done"], kinds
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["per_seed"][0]["epochs_run"] == 1 and results["stopped_early_by_user"]


class FakeJob:
    """A job double: records stop() and replays queued events."""

    def __init__(self, events=()):
        self.started = self.stopped = False
        self._events = list(events)

    def start(self):
        self.started = True
        return self

    def stop(self):
        self.stopped = True

    def events(self):
        yield from self._events


def test_stop_waits_for_the_first_step_of_each_run():
    job = FakeJob([{"kind": "tick"}, {"kind": "step"}, {"kind": "trial"}, {"kind": "step"}])
    run = TrainRun("s", job)
    run.request_stop()
    assert not job.stopped  # no checkpoint yet: the stop waits
    events = run.follow()
    next(events)
    assert not job.stopped
    next(events)
    assert job.stopped and run.stepped  # the first step came: stopped now
    next(events)
    assert not run.stepped  # an HPO trial starts: waits for its own first step again


def test_one_training_at_a_time_queue_cancel_and_stop(tmp_path):
    sessions = TrainingSessions(tmp_path / "scratch")
    assert sessions.stop("alice") == "none" and not sessions.enqueue("alice")
    work = sessions.work_dir("alice")
    (work / "upload").mkdir()
    (work / "upload" / "x.png").write_bytes(b"x")
    run = TrainRun("alice", FakeJob(), work=work, run_dir=tmp_path / "runs" / "r")
    sessions.start(run)
    assert run.job.started and sessions.busy()
    assert sessions.enqueue("bob")  # bob waits
    assert sessions.stop("bob") == "cancelled" and sessions.take_cancelled("bob")
    assert not sessions.take_cancelled("bob")  # answered once
    assert sessions.stop("alice") == "stopping" and run.stop_requested
    (tmp_path / "runs" / "r").mkdir(parents=True)
    sessions.end(run, failed=True)
    assert not sessions.busy() and sessions.stop("alice") == "none"
    assert not (tmp_path / "runs" / "r").exists()  # an incomplete run folder is removed
    assert not (tmp_path / "scratch" / "alice").exists()  # scratch and the empty session folder are gone


def test_a_client_that_leaves_stops_its_job_and_cleans_up(tmp_path):
    sessions = TrainingSessions(tmp_path)
    job = FakeJob([{"kind": "error", "message": "stopped"}])
    run = TrainRun("s", job, work=sessions.work_dir("s"), run_dir=tmp_path / "run")
    (tmp_path / "run").mkdir()
    sessions.start(run)
    sessions.end(run)  # neither finished nor failed: the client went away
    assert job.stopped
    import time

    for _ in range(100):
        if not (tmp_path / "run").exists() and not run.work.exists():
            break
        time.sleep(0.02)
    assert not (tmp_path / "run").exists() and not run.work.exists()


@pytest.mark.parametrize("text, expected", [("My run: v1/2", "My-run-v1-2"), ("../..", ""), (None, ""),
                                            ("a" * 80, "a" * 60), ("ok_name.3", "ok_name.3")])
def test_safe_run_name(text, expected):
    assert safe_run_name(text) == expected
