"""Optuna storages and studies shared by many workers (the one scheduler of HPO and benchmark grids).

- An SQLite file in the results folder is the embedded default (one machine, one or several GPUs);
  any SQLAlchemy URL such as ``postgresql://user@host/db`` serves many machines (driver: psycopg).
- Workers heartbeat while a trial runs; a trial whose worker stopped beating for ``grace_period``
  seconds is failed by the next worker that looks and re-queued once per death
  (:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`, optuna's new name for
  ``RetryFailedTrialCallback``), up to ``max_retry`` times.
- Workers started at the same instant on a new storage race to create its tables and the study;
  :func:`open_storage` and :func:`open_study` retry that race instead of crashing.
"""
from __future__ import annotations

import random
import time
import warnings
from pathlib import Path
from typing import Callable, TypeVar

HEARTBEAT_INTERVAL = 30  # seconds between a running trial's heartbeats
GRACE_PERIOD = 120  # seconds without a heartbeat before a running trial counts as dead
MAX_RETRY = 3  # re-queues of a trial whose worker died

T = TypeVar("T")


class StudyError(RuntimeError):
    """A storage or study cannot be opened (bad URL, missing driver, unreachable server)."""


def default_url(folder: str | Path, name: str = "studies.db") -> str:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / name).resolve()}"


def _racy(fn: Callable[[], T], what: str, attempts: int = 8) -> T:
    """Call ``fn``; on the errors two processes get when they create the same tables or study at the
    same instant (``table ... already exists``, a duplicate key, ``database is locked``), wait a
    random moment and try again."""
    import sqlalchemy.exc

    from optuna.exceptions import DuplicatedStudyError

    for attempt in range(attempts):
        try:
            return fn()
        except (sqlalchemy.exc.DBAPIError, DuplicatedStudyError) as e:
            if attempt == attempts - 1:
                raise StudyError(f"{what}: {str(e).splitlines()[0]}") from None
            time.sleep(random.uniform(0.05, 0.25) * (1.5 ** attempt))
    raise AssertionError("unreachable")


def open_storage(url: str, heartbeat_interval: int = HEARTBEAT_INTERVAL, grace_period: int = GRACE_PERIOD,
                 max_retry: int = MAX_RETRY):
    """An :class:`optuna.storages.RDBStorage` with heartbeats and retry of dead workers' trials."""
    import optuna
    from optuna.exceptions import ExperimentalWarning

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)

    def make():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=int(heartbeat_interval),
                grace_period=int(grace_period),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry))

    try:
        return _racy(make, f"cannot open the optuna storage {url}")
    except ImportError:
        raise StudyError(f"no database driver for {url.split(':')[0]} URLs: pip install -r requirements.txt "
                         f"(PostgreSQL: psycopg[binary])") from None
    except (ValueError, TypeError) as e:  # e.g. a malformed URL
        raise StudyError(f"bad optuna storage URL {url!r}: {e}") from None


def open_study(name: str, storage, direction: str = "maximize", sampler=None, pruner=None):
    """Create the study, or load it when another worker created it first (also at the same instant)."""
    import optuna

    return _racy(lambda: optuna.create_study(study_name=name, storage=storage, direction=direction,
                                             sampler=sampler, pruner=pruner, load_if_exists=True),
                 f"cannot create or load study {name!r}")


ALIVE = "heartbeat_recorded"  # user attribute: the trial's first heartbeat is in the storage


def mark_alive(storage, study, trial) -> None:
    """Record the trial's first heartbeat now, then say so (:data:`ALIVE`). Call first thing in an
    objective. optuna only ever fails a running trial that has a heartbeat: a worker killed between
    taking a trial and its heartbeat thread's first write would leave the trial running for good
    (:func:`fail_stale_trials` fails such a trial once ``grace_period`` has passed without ALIVE)."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                               trial.number)
    _racy(lambda: storage.record_heartbeat(trial_id), "cannot record a heartbeat")
    trial.set_user_attr(ALIVE, True)


def fail_stale_trials(study, storage=None) -> None:
    """Fail (and re-queue) the running trials whose worker stopped beating; optuna does this itself
    before each new trial, a worker waiting on others calls it here. With ``storage``, also the
    running trials that never recorded a heartbeat (no :data:`ALIVE`) and started over
    ``grace_period`` ago: their worker died before its first beat."""
    import datetime

    import optuna
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        _racy(lambda: optuna.storages.fail_stale_trials(study), "cannot check for dead workers")
        if storage is None or storage.grace_period is None:
            return
        now = datetime.datetime.now()
        limit = datetime.timedelta(seconds=storage.grace_period)
        study_id = storage.get_study_id_from_name(study.study_name)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get(ALIVE) or t.datetime_start is None or now - t.datetime_start <= limit:
                continue
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            try:
                failed = _racy(lambda: storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL),
                               "cannot fail a dead worker's trial")
            except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
                continue
            if failed:
                callback = storage.get_heartbeat_stale_trial_callback()  # re-queue, as for a stale trial
                if callback is not None:
                    callback(study, storage.get_trial(trial_id))
