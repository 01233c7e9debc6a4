"""Workers that start together on a new study: any number, at the same instant, on SQLite or
PostgreSQL, all open it (the creation race is retried) and none crashes; and the search's first
ASHA rung lies after the warm-up."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.postgres import postgres_url  # noqa: F401  (fixture)
from trainer.study.hpo import DEFAULT_MIN_RESOURCE, first_rung, make_study

ROOT = Path(__file__).resolve().parents[3]
# Each worker imports, says it is ready, waits for the go file (created once every worker is ready),
# then creates-or-loads the study and adds a trial: all of them at the same instant.
WORKER = """
import os, sys, time
from trainer.study.hpo import make_study
go, url, worker = sys.argv[1], sys.argv[2], sys.argv[3]
open(go + "." + worker, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
study = make_study("together", url, seed=int(worker))
trial = study.ask()
study.tell(trial, float(worker))
print("ok", worker)
"""


def _start_together(url: str, go: Path, n: int = 4) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(go), url, str(k)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in range(n)]
    deadline = time.time() + 120
    while not all(Path(f"{go}.{k}").exists() for k in range(n)) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, o) for p, o in zip(procs, outs)]


def _assert_all_ran(url: str, go: Path, n: int = 4) -> None:
    done = _start_together(url, go, n)
    assert all(d.returncode == 0 for d in done), "\n".join(d.stdout[-2000:] for d in done)
    study = make_study("together", url, seed=0)
    assert len(study.get_trials()) == n  # one study, every worker's trial in it


@pytest.mark.slow
def test_four_workers_start_together_on_sqlite(tmp_path):
    for rep in range(5):
        _assert_all_ran(f"sqlite:///{tmp_path / f'rep{rep}.db'}", tmp_path / f"go{rep}")


@pytest.mark.slow
@pytest.mark.postgres
def test_four_workers_start_together_on_postgres(postgres_url, tmp_path):  # noqa: F811
    # a fresh database per test; each repetition a fresh study name on it is the same race
    for rep in range(5):
        url = postgres_url
        if rep:
            import optuna

            optuna.delete_study(study_name="together", storage=url)
        _assert_all_ran(url, tmp_path / f"go{rep}")


def test_first_rung_after_warm_up():
    assert first_rung(1.0) >= 3 and first_rung(0.0) == DEFAULT_MIN_RESOURCE
    assert first_rung(5.0) > 5


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_worker_killed_before_its_first_heartbeat_does_not_hold_its_trial_forever(tmp_path):
    """optuna fails only running trials that have a heartbeat; one taken by a worker that died before
    its first beat is failed after the grace period and re-queued; a live (marked) trial is left alone."""
    import optuna

    from trainer.study.storage import ALIVE, fail_stale_trials, mark_alive, open_storage, open_study

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=1)
    study = open_study("cell", storage)
    study.enqueue_trial({}, user_attrs={"seed": 0})
    orphan = study.ask()  # taken, then its worker "dies": no heartbeat, no ALIVE
    live = study.ask()
    mark_alive(storage, study, live)
    assert study.get_trials()[live.number].user_attrs[ALIVE] is True
    fail_stale_trials(study, storage)  # within the grace period: nothing happens
    S = optuna.trial.TrialState
    assert [t.state for t in study.get_trials()] == [S.RUNNING, S.RUNNING]
    time.sleep(1.2)
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("cell"), live.number))  # the live worker keeps beating
    fail_stale_trials(study, storage)
    trials = study.get_trials()
    assert trials[orphan.number].state == S.FAIL and trials[live.number].state == S.RUNNING
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retry) == 1 and retry[0].state == S.WAITING and retry[0].user_attrs["seed"] == 0
    fail_stale_trials(study, storage)  # idempotent: failed once, re-queued once
    assert sum(t.state == S.WAITING for t in study.get_trials()) == 1
