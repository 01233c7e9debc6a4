"""A run's folder and its ``results.json``: the only code that lays them out, writes and reads them.

    run = RunDir.prepare(cfg)                 # refuses a finished run unless --overwrite / --resume
    run.save_config(cfg)                      # <run>/config.yaml
    run.seed_dir(0)                           # <run>/seed_0/ (splits.json, history.json, checkpoint/, adapter/)
    results = RunResults.create(cfg, task=..., backbone=..., per_seed=[...], adapter_dir=run.adapter_rel(0), ...)
    run.write_results(results)                # <run>/results.json, atomic, written last
    RunResults.read(run.root).adapter_path   # the best seed's adapter folder

Layout::

    <run>/config.yaml                the resolved configuration
    <run>/seed_<k>/splits.json       the exact split (classification)
    <run>/seed_<k>/history.json      per-epoch loss and validation metrics
    <run>/seed_<k>/predictions.csv   per-image probabilities of val and test (trainer.loops.predictions)
    <run>/seed_<k>/checkpoint/       the last checkpoint, for --resume (trainer.loops.checkpoint)
    <run>/seed_<k>/best.safetensors  the best-validation epoch's tensors, tested at the end
    <run>/seed_<k>/adapter/          the adapter folder (adapters.io format)
    <run>/results.json               written last: metrics over seeds, params, versions
    <run>/.in_use                    while a process writes the run: its pid, host and start time

Each tensor is kept once: when the run is finished, ``checkpoint/`` and ``best.safetensors`` (copies of
what ``adapter/`` holds, plus the optimizer state) are removed, unless ``--keep-checkpoints``.

A generation run with one seed keeps its seed's files in ``<run>/`` itself (``flat=True``), as it always did.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .config import ConfigError

RESULTS_NAME = "results.json"
CONFIG_NAME = "config.yaml"
# What a resumed run may change: its epoch budget, where and whether its result goes, and the images it
# writes for validation and FID (sampling only: training is unaffected).
RESUME_MAY_CHANGE = frozenset({"epochs", "max_train_steps", "output_dir", "resume", "overwrite", "push_to_hub",
                               "keep_checkpoints",
                               "hub_private", "fid_samples", "validation_steps", "validation_prompts",
                               "num_inference_steps", "guidance_scale"})
RUN_KIND = "medpeft-run"
"""``results.json``'s ``"kind"``: what tells a MedPEFT run from any other results.json."""
TRIAL_KIND = "medpeft-search-trial"
"""The ``"kind"`` of an HPO trial's results.json: validation scores only, never a leaderboard row."""
LOCK_NAME = ".in_use"
PREDICTIONS_NAME = "predictions.csv"


class RunExistsError(ConfigError):
    """The output folder already holds a finished run (and neither overwrite nor resume was asked)."""


class ResultsError(ValueError):
    """A ``results.json`` cannot be read (missing, not JSON, not an object); the message names the file."""


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` through a temporary file in the same folder and
    ``os.replace``: readers see the old file or the new one, never half of one. The file is created
    with ``open`` (mode 0666 minus the umask), like any other file the user writes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def git_commit() -> str | None:
    """The project's git commit (``None`` outside a checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class RunResults:
    """The contents of a run's ``results.json`` (``data``, a plain dict) and where it lies."""

    data: dict
    path: Path | None = None

    @classmethod
    def create(cls, cfg, *, task: str, backbone: str, per_seed: list[dict], adapter_dir: str,
               metrics: dict, wall_time_s: float, data_notes: Iterable[str] = (), **extra: Any) -> "RunResults":
        """The record every run writes: what ran (method, backbone, dataset, fraction, seeds, the full
        config), the metrics over seeds, parameter counts, the best adapter's folder (relative to the
        run), per-seed details, library versions and the git commit. ``extra`` adds task-specific keys
        (e.g. ``class_names``, ``headline``, ``base_model``)."""
        from adapters.io import library_versions

        first = per_seed[0]
        data = {
            "kind": RUN_KIND, "task": task, "method": cfg.method, "backbone": backbone, **extra,
            "dataset": cfg.dataset,
            # the share of training labels: --fraction, or a split list's 1 / 10 / 100 %
            "fraction": cfg.label_fraction / 100 if getattr(cfg, "split_lists", None) else cfg.fraction,
            "n_train": first["split_sizes"]["train"], "split_sizes": first["split_sizes"],
            "seeds": [r["seed"] for r in per_seed], "metrics": metrics,
            "trainable_params": first["trainable_params"], "total_params": first["total_params"],
            "adapter_dir": adapter_dir, "per_seed": per_seed, "data_notes": list(data_notes),
            "wall_time_s": wall_time_s, "config": cfg.to_dict(),
            "versions": {**library_versions(), "python": platform.python_version()}, "git_commit": git_commit(),
        }
        return cls(data)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "RunResults":
        """The ``results.json`` at ``path`` (a file, or a run folder holding one). Raises
        :class:`ResultsError` when it cannot be read as a JSON object; check :attr:`is_run` to know
        whether it is a MedPEFT run."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ResultsError(f"{path}: not readable JSON ({e})") from None
        if not isinstance(data, dict):
            raise ResultsError(f"{path}: not a JSON object")
        return cls(data, path)

    @classmethod
    def of_adapter(cls, folder: str | os.PathLike) -> "RunResults | None":
        """The results of the run whose best adapter is ``folder`` (``<run>/seed_N/adapter`` or
        ``<run>/adapter``); ``None`` when the folder is not a run's ``adapter_dir`` (or is an HPO trial's)."""
        folder = Path(folder).resolve()
        for parent in list(folder.parents)[:3]:
            if (parent / RESULTS_NAME).is_file():
                try:
                    found = cls.read(parent)
                except ResultsError:
                    return None
                # an HPO trial's results (validation only) describe no finished model: not a card's source
                return found if found.adapter_path == folder and found.data.get("kind") != TRIAL_KIND else None
        return None

    @property
    def is_run(self) -> bool:
        return self.data.get("kind") == RUN_KIND

    @property
    def run_dir(self) -> Path | None:
        return self.path.parent if self.path is not None else None

    @property
    def adapter_path(self) -> Path | None:
        """The best seed's adapter folder (absolute), from ``adapter_dir``."""
        if self.run_dir is None:
            return None
        return (self.run_dir / str(self.data.get("adapter_dir", ""))).resolve()

    @staticmethod
    def search_trial(data: dict) -> dict:
        """An HPO trial's results.json: its kind says so, and nothing in it names the test split (the
        trial never saw it): no test sizes, no test options from the config (config.yaml keeps them)."""
        data = {**data, "kind": TRIAL_KIND}
        data["split_sizes"] = {k: v for k, v in (data.get("split_sizes") or {}).items() if k != "test"}
        data["config"] = {k: v for k, v in (data.get("config") or {}).items() if not k.startswith("test")}
        data["per_seed"] = [{k: v for k, v in r.items() if k != "test"} | {"split_sizes": {
            k: n for k, n in (r.get("split_sizes") or {}).items() if k != "test"}} for r in data.get("per_seed", [])]
        return data

    def write(self, folder: str | os.PathLike) -> Path:
        """``<folder>/results.json``, atomically; sets :attr:`path`."""
        self.path = write_json_atomic(Path(folder) / RESULTS_NAME, self.data)
        return self.path


class RunDir:
    """The folder of one run. ``flat``: a single seed keeps its files in the run folder itself
    (generation runs); otherwise (and always with several seeds) each seed has ``seed_<k>/``."""

    def __init__(self, root: str | os.PathLike, seeds: Iterable[int] = (0,), flat: bool = False):
        self.root = Path(root)
        self.seeds = list(seeds)
        self.flat = bool(flat) and len(self.seeds) == 1

    @classmethod
    def prepare(cls, cfg, flat: bool = False) -> "RunDir":
        """The run folder of ``cfg.output_dir``, created; :class:`RunExistsError` when it holds a finished
        run (``results.json``) and neither ``cfg.overwrite`` nor ``cfg.resume`` is set."""
        run = cls.check_can_start(cfg, flat=flat)
        run.root.mkdir(parents=True, exist_ok=True)
        run.acquire()
        return run

    @classmethod
    def check_can_start(cls, cfg, flat: bool = False) -> "RunDir":
        """The run folder of ``cfg.output_dir``, not created; :class:`RunExistsError` when it holds a
        finished run (``results.json``) and neither ``cfg.overwrite`` nor ``cfg.resume`` is set."""
        run = cls(cfg.output_dir, cfg.seeds, flat=flat)
        holder = run_in_use(run.root)
        if holder:
            raise RunExistsError(f"{run.root} is in use by a running process ({holder}); wait for it to finish, "
                                 f"stop it, or choose another --output-dir")
        if run.finished and not (cfg.overwrite or cfg.resume):
            raise RunExistsError(f"{run.root} already holds a finished run ({RESULTS_NAME}). Use --overwrite to "
                                 f"replace it or choose another --output-dir")
        if run.config_path.exists() and not run.finished and not (cfg.overwrite or cfg.resume):
            raise RunExistsError(f"{run.root} holds an interrupted run: continue it with --resume, start it over "
                                 f"with --overwrite, or choose another --output-dir")
        if cfg.resume and run.finished and not any(
                (run.checkpoint_dir(s) / "state.json").exists() for s in run.seeds):
            raise RunExistsError(f"{run.root} holds a finished run whose checkpoints were removed when it finished "
                                 f"(--keep-checkpoints keeps them): it cannot be continued; start it over with "
                                 f"--overwrite or choose another --output-dir")
        if cfg.resume and not cfg.overwrite and run.config_path.exists():
            changed = run.changed_settings(cfg)
            if changed:
                raise RunExistsError(f"--resume with settings that differ from the run in {run.root}: "
                                     f"{', '.join(changed)} (only {', '.join(sorted(RESUME_MAY_CHANGE))} may "
                                     f"change); use --overwrite to start over with the new settings")
        return run

    def changed_settings(self, cfg) -> list[str]:
        """The options of ``cfg`` that differ from the run's saved ``config.yaml`` (besides those a resumed
        run may change: the epoch budget and output options)."""
        import yaml

        saved = yaml.safe_load(self.config_path.read_text()) or {}
        now = yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return sorted(k for k in set(saved) | set(now)
                      if k not in RESUME_MAY_CHANGE and saved.get(k) != now.get(k))

    # -- paths
    @property
    def results_path(self) -> Path:
        return self.root / RESULTS_NAME

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def finished(self) -> bool:
        return self.results_path.exists()

    def seed_dir(self, seed: int) -> Path:
        return self.root if self.flat else self.root / f"seed_{seed}"

    def adapter_rel(self, seed: int) -> str:
        """The adapter folder of ``seed`` relative to the run (results.json's ``adapter_dir``)."""
        return "adapter" if self.flat else f"seed_{seed}/adapter"

    def adapter_dir(self, seed: int) -> Path:
        return self.root / self.adapter_rel(seed)

    def checkpoint_dir(self, seed: int) -> Path:
        return self.seed_dir(seed) / "checkpoint"

    def splits_path(self, seed: int) -> Path:
        return self.seed_dir(seed) / "splits.json"

    def history_path(self, seed: int) -> Path:
        return self.seed_dir(seed) / "history.json"

    def best_weights_path(self, seed: int) -> Path:
        """The best-validation adapter tensors so far (classification; tested once at the end)."""
        return self.seed_dir(seed) / "best.safetensors"

    def predictions_path(self, seed: int) -> Path:
        return self.seed_dir(seed) / PREDICTIONS_NAME

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_NAME

    # -- in use by a process
    def acquire(self) -> None:
        """Mark the folder in use by this process (the main one under torchrun: ranks share a launcher)."""
        if os.environ.get("RANK", "0") != "0":
            return
        info = {"pid": os.getpid(), "ppid": os.getppid(), "host": platform.node(), "started": time.time()}
        write_json_atomic(self.lock_path, info)

    def release(self) -> None:
        """Unmark the folder (only this process's own mark)."""
        info = _read_lock(self.lock_path)
        if info and info.get("pid") == os.getpid() and info.get("host") == platform.node():
            self.lock_path.unlink(missing_ok=True)

    def break_mark(self) -> None:
        """Remove the in-use mark whoever set it: for a caller that knows its writer is dead (a benchmark
        seed run re-queued after its worker stopped heartbeating, possibly on another host)."""
        self.lock_path.unlink(missing_ok=True)

    # -- each tensor once
    def drop_weights(self) -> list[Path]:
        """Every tensor file of the run: checkpoints, best-epoch copies and adapters (an HPO trial whose
        configuration is retrained elsewhere keeps only its results and history)."""
        gone = self.drop_checkpoints()
        for seed in self.seeds:
            for adapter in {self.adapter_dir(seed), *self.seed_dir(seed).glob("adapter")}:
                if adapter.is_dir():
                    shutil.rmtree(adapter, ignore_errors=True)
                    gone.append(adapter)
        return gone

    def drop_checkpoints(self) -> list[Path]:
        """Remove every seed's resume checkpoint and best-epoch copy (the adapter keeps the tensors)."""
        gone = []
        for seed in self.seeds:
            for p in (self.checkpoint_dir(seed), self.best_weights_path(seed)):
                for q in (p, p.with_name(p.name + ".tmp"), p.with_name(p.name + ".old")):
                    if q.is_dir():
                        shutil.rmtree(q, ignore_errors=True)
                        gone.append(q)
                    elif q.exists():
                        q.unlink(missing_ok=True)
                        gone.append(q)
        return gone

    # -- writing
    def save_config(self, cfg) -> Path:
        """``config.yaml``, atomically: its presence marks a started run, so never half of one."""
        import yaml

        path = self.config_path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def write_history(self, seed: int, history: list[dict]) -> Path:
        return write_json_atomic(self.history_path(seed), history)

    def write_results(self, results: RunResults | dict) -> Path:
        """``results.json``, atomically (written last: its presence marks the run finished)."""
        results = results if isinstance(results, RunResults) else RunResults(results)
        return results.write(self.root)

    def read_results(self) -> RunResults:
        return RunResults.read(self.results_path)


def _read_lock(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def run_in_use(root: str | os.PathLike) -> str | None:
    """Who is writing the run folder ``root`` now ("pid 123 on host h, since 12:01"), or None: no mark,
    a mark of a process that is gone (a killed run: resumable), this process's own, or its torchrun
    siblings'. A mark from another host is trusted for a day (its pid cannot be checked from here)."""
    info = _read_lock(Path(root) / LOCK_NAME)
    if not info or not isinstance(info.get("pid"), int):
        return None
    pid, host = info["pid"], str(info.get("host", "?"))
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(info.get("started", 0) or 0)))
    if host == platform.node():
        if pid == os.getpid() or not _pid_alive(pid):
            return None
        if os.environ.get("WORLD_SIZE") and info.get("ppid") == os.getppid():
            return None  # a rank of the same torchrun launch
    elif time.time() - float(info.get("started", 0) or 0) > 86_400:
        return None
    return f"pid {pid} on host {host}, since {since}; if no such process runs, delete {Path(root) / LOCK_NAME}"
