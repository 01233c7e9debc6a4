"""Benchmark sweeps on a tiny grid (tiny backbones, a small learnable image folder in a real
layout): every cell runs once, finished cells are skipped, a killed sweep resumes, two workers
split the cells without overlap, and the report writes tables and plots."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from adapters.backbones import TINY_CNN
from trainer.study.benchmark import Claim, cells, load_grid, run_grid
from trainer.config import ConfigError

from tests.helpers import write_shapes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("grid")
    data = write_shapes(tmp / "shapes", per_class=8)
    grid = {
        "name": "tiny",
        "base": {"backbone": TINY_CNN, "pretrained": False, "epochs": 2, "batch_size": 8, "lr": 0.01,
                 "num_workers": 0},
        "data_dirs": {"imagefolder": str(data)},
        "grid": {"method": ["bitfit", "linear_probe", "batchnorm", "full"], "dataset": ["imagefolder"],
                 "fraction": [1.0]},
        "seeds": [0, 1],
    }
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _ran_cells(output: str) -> list[str]:
    return re.findall(r"cell \d+/\d+: (\S+)", output)


def test_grid_expands_to_cells(grid_file):
    grid = load_grid(grid_file)
    assert [c.method for c in cells(grid)] == ["bitfit", "linear_probe", "batchnorm", "full"]


def test_bad_grid_is_a_clear_error(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text(yaml.safe_dump({"grid": {"methods": ["lora"]}}))
    with pytest.raises(ConfigError, match="unknown grid keys"):
        load_grid(bad)


def test_sweep_runs_every_cell_once_and_skips_finished(grid_file, tmp_path):
    results = tmp_path / "results"
    counts = run_grid(grid_file, results, worker="w0")
    assert counts == {"done": 0, "ran": 4, "skipped_claimed": 0, "failed": 0}
    files = sorted(results.rglob("results.json"))
    assert len(files) == 4
    stamps = {f: f.stat().st_mtime_ns for f in files}
    assert run_grid(grid_file, results, worker="w0")["done"] == 4
    assert {f: f.stat().st_mtime_ns for f in files} == stamps  # nothing re-run
    assert not list((results / ".claims").glob("*.claim"))  # claims released
    r = json.loads(files[0].read_text())
    assert r["seeds"] == [0, 1] and len(r["metrics"]["test"]["f1_macro"]["values"]) == 2

    from trainer.study.report import write_report

    paths = write_report(results, tmp_path / "report")
    names = {Path(p).name for p in paths}
    assert {"classification.md", "classification.csv", "pareto.png"} <= names
    md = (tmp_path / "report" / "classification.md").read_text()
    assert "bitfit" in md and "average rank" in md.lower()


def test_killed_sweep_resumes(grid_file, tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "trainer.benchmark", "run", str(grid_file), "--results-dir", str(results),
           "--worker-id", "w1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(results.rglob("results.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # killed mid-sweep, no chance to clean up
    proc.wait()
    finished = {p.parent for p in results.rglob("results.json")}
    assert 1 <= len(finished) < 4
    stamps = {p: p.stat().st_mtime_ns for p in results.rglob("results.json")}
    # Same worker id restarts: its stale claim is its own, the finished cells are skipped.
    again = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(list(results.rglob("results.json"))) == 4
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert len(_ran_cells(again.stdout)) == 4 - len(finished)


def test_two_workers_never_run_the_same_cell(grid_file, tmp_path):
    results = tmp_path / "results"
    procs = [subprocess.Popen([sys.executable, "-m", "trainer.benchmark", "run", str(grid_file), "--results-dir",
                               str(results), "--worker-id", f"w{i}"], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ran = [_ran_cells(o) for o in outs]
    assert not set(ran[0]) & set(ran[1]), ran
    assert len(list(results.rglob("results.json"))) == 4


def test_stale_claim_is_taken_over_and_live_one_is_not(tmp_path):
    path = tmp_path / "c.claim"
    first = Claim(path, "a", stale_after=60, heartbeat=0.05)
    assert first.acquire()
    assert not Claim(path, "b", stale_after=60).acquire()  # alive and fresh
    first._stop.set()
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert Claim(path, "b", stale_after=60).acquire()  # its worker stopped beating
