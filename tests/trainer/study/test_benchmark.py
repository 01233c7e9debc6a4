"""Benchmark grids on optuna's storage, on a tiny grid (tiny CNN, a small learnable image folder):
the paper's protocol per cell (ASHA search, then the chosen configuration on every seed), every
cell and every seed run exactly once, finished cells skipped, several workers (SQLite and
PostgreSQL), a worker killed mid-trial, and the shipped grids' settings."""
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
from trainer.config import ConfigError
from trainer.study.benchmark import run_grid
from trainer.study.grid import cell_config, cell_space, cells, load_grid

from tests.helpers import write_shapes
from tests.helpers.postgres import postgres_url  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[3]
GRIDS = ROOT / "benchmarks"
METHODS = ["bitfit", "full"]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("grid")
    data = write_shapes(tmp / "shapes", per_class=8)
    grid = {
        "name": "tiny",
        "base": {"backbone": TINY_CNN, "pretrained": False, "epochs": 2, "batch_size": 8, "num_workers": 0,
                 "warmup_epochs": 0},
        "data_dirs": {"imagefolder": str(data)},
        "grid": {"method": METHODS, "dataset": ["imagefolder"], "fraction": [1.0]},
        "seeds": SEEDS,
        "hpo": {"trials": 3, "min_resource": 1},
    }
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _worker(grid_file: Path, results: Path, name: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "trainer.benchmark", "run", str(grid_file), "--results-dir", str(results),
           "--worker-id", name, "--poll", "0.5", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _studies(storage: str):
    import optuna

    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def _assert_every_cell_once(results: Path, storage: str) -> None:
    """Each cell: 3 search trials, one completed run per seed, one results.json, one report row."""
    import optuna

    S = optuna.trial.TrialState
    studies = _studies(storage)
    for method in METHODS:
        key = f"tiny/imagefolder/default/{method}/frac_1"
        search = [t for t in studies[f"{key}/search"].trials if not t.user_attrs.get("surplus")
                  and (t.state != S.FAIL or "error" in t.user_attrs)]
        assert len(search) == 3 and all(t.state in (S.COMPLETE, S.PRUNED) for t in search), search
        done = [t for t in studies[f"{key}/seeds"].trials if t.state == S.COMPLETE]
        assert sorted(t.user_attrs["seed"] for t in done) == SEEDS
        r = json.loads((results / key.split("/", 1)[1] / "results.json").read_text())
        assert r["seeds"] == SEEDS and len(r["metrics"]["test"]["f1_macro"]["values"]) == 2
        best = studies[f"{key}/search"].best_trial.params
        assert r["chosen"]["lr"] == pytest.approx(best["lr"])
        assert r["search"]["trials"] == 3
    from trainer.study.results import local_rows

    rows = local_rows(results)
    assert sorted(rows["method"]) == sorted(METHODS)  # trials and seed runs are not report rows


def test_grid_expands_to_cells(grid_file):
    assert [c.method for c in cells(load_grid(grid_file))] == METHODS


def test_bad_grid_is_a_clear_error(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text(yaml.safe_dump({"grid": {"methods": ["lora"]}}))
    with pytest.raises(ConfigError, match="unknown grid keys"):
        load_grid(bad)
    bad.write_text(yaml.safe_dump({"grid": {"method": ["lora"]}, "hpo": {"trails": 3}}))
    with pytest.raises(ConfigError, match="unknown hpo options"):
        load_grid(bad)


def test_shipped_grids_carry_the_protocol_and_lr_ranges_per_family(tmp_path):
    ranges: dict[tuple[str, str], tuple] = {}
    for path in sorted(GRIDS.glob("*.yaml")):
        grid = load_grid(path)
        generation = (grid.get("base") or {}).get("task") == "generation"
        assert grid["seeds"] == [0, 1, 2], path.name
        if not generation and path.name not in ("medpeft.yaml", "foundation_cxr.yaml"):  # MED-PEFT: fixed settings
            assert grid["hpo"]["trials"] >= 10, path.name  # an ASHA search per cell
        for cell in cells(grid):
            cfg = cell_config(grid, cell, tmp_path)
            space = cell_space(grid, cell, cfg)
            if "lr" in space:
                ranges[(cfg.task, cell.method)] = space["lr"][1]
            assert "weight_decay" in space
    assert ranges[("classification", "full")] == (1e-5, 1e-3)
    for peft in ("linear_probe", "bitfit", "lora", "ssf", "tsa", "batchnorm", "adaptformer"):
        assert ranges[("classification", peft)] == (1e-4, 1e-2), peft
    assert ranges[("generation", "full")] == (1e-6, 1e-4)
    for small in ("bias", "norm", "svdiff"):
        assert ranges[("generation", small)] == (1e-4, 1e-2), small
    assert len({ranges[("classification", "full")], ranges[("classification", "bitfit")],
                ranges[("generation", "full")]}) == 3


def test_table4_runs_each_method_at_its_family_lr(tmp_path):
    grid = load_grid(GRIDS / "table4_generation.yaml")
    lrs = {c.method: cell_config(grid, c, tmp_path).lr for c in cells(grid)}
    assert 1e-6 <= lrs["full"] <= 1e-4 and 1e-4 <= lrs["bias"] <= 1e-2 and lrs["bias"] > 10 * lrs["full"]


@pytest.mark.slow  # a real sweep (~7 s)
def test_sweep_searches_then_runs_seeds_once_and_skips_finished(grid_file, tmp_path):
    results = tmp_path / "results"
    counts = run_grid(grid_file, results, worker="w0", poll=0.1)
    assert counts == {"done": 2, "ran": 10, "failed": 0, "cells": 2}  # 2 x (3 trials + 2 seeds)
    storage = f"sqlite:///{results / 'studies.db'}"
    _assert_every_cell_once(results, storage)
    files = sorted((results / "imagefolder").glob("*/*/results.json"))
    stamps = {f: f.stat().st_mtime_ns for f in files}
    assert run_grid(grid_file, results, worker="w0", poll=0.1)["ran"] == 0
    assert {f: f.stat().st_mtime_ns for f in files} == stamps  # nothing re-run

    from trainer.study.report import write_report

    names = {Path(p).name for p in write_report(results, tmp_path / "report")}
    assert {"classification.md", "classification.csv", "efficiency.csv", "pareto.png"} <= names
    md = (tmp_path / "report" / "classification.md").read_text()
    assert "bitfit" in md and "average rank" in md.lower() and "lr" in md


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_on_postgres_run_the_grid_once(grid_file, tmp_path, postgres_url):  # noqa: F811
    results = tmp_path / "results"
    procs = [_worker(grid_file, results, f"w{i}", "--storage", postgres_url) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    runs = [line for o in outs for line in re.findall(r"cell \d+/\d+: (\S+ seed \d+)", o)]
    assert sorted(runs) == sorted(set(runs)) and len(runs) == 4  # each seed run trained by one worker
    assert all(re.search(r"search trial", o) for o in outs), "both workers took search trials"
    _assert_every_cell_once(results, postgres_url)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_killed_worker_trial_is_retried(grid_file, tmp_path, backend, request):
    import optuna

    results = tmp_path / "results"
    storage = request.getfixturevalue("postgres_url") if backend == "postgres" else \
        f"sqlite:///{results / 'studies.db'}"
    flags = ["--storage", storage, "--heartbeat", "1", "--stale-after", "3"]
    first = _worker(grid_file, results, "doomed", *flags)
    deadline = time.time() + 240
    seen = ""
    while time.time() < deadline and "seed 1" not in seen:  # mid-run of a seed (after the first cell's search)
        seen += first.stdout.readline()
    first.send_signal(signal.SIGKILL)  # killed mid-trial, no chance to clean up
    first.wait()
    second = _worker(grid_file, results, "survivor", *flags)
    out = second.communicate(timeout=600)[0]
    assert second.returncode == 0, out
    seeds = _studies(storage)["tiny/imagefolder/default/bitfit/frac_1/seeds"]
    S = optuna.trial.TrialState
    dead = [t for t in seeds.trials if t.state == S.FAIL]
    assert len(dead) == 1 and dead[0].user_attrs["seed"] == 1  # the killed run, failed by the survivor ...
    retry = [t for t in seeds.trials if t.system_attrs.get("failed_trial") == dead[0].number]
    assert len(retry) == 1 and retry[0].state == S.COMPLETE  # ... re-queued and completed once
    _assert_every_cell_once(results, storage)


def test_report_on_a_missing_or_empty_folder_says_so_and_exits_2(tmp_path, capsys):
    from trainer.study.benchmark import main

    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no MedPEFT results.json" in capsys.readouterr().err
    assert list((tmp_path / "empty").iterdir()) == []  # no report folder made


def test_linear_probe_rows_say_when_features_were_cached():
    from trainer.study.results import CACHED_FEATURES_NOTE, cached_features_note

    assert cached_features_note({"method": "linear_probe", "config": {"cache_features": True}}) == CACHED_FEATURES_NOTE
    assert cached_features_note({"method": "linear_probe", "config": {"cache_features": False}}) == ""
    assert cached_features_note({"method": "lora", "config": {}}) == ""
    grid = load_grid(GRIDS / "table2_resnet50.yaml")
    assert grid["overrides"]["linear_probe"]["cache_features"] is False  # like-for-like in the paper grids


def test_medpeft_grid_maps_fractions_to_split_lists(tmp_path):
    grid = load_grid(GRIDS / "medpeft.yaml")
    cfgs = {(c.method, c.dataset, c.fraction): cell_config(grid, c, tmp_path) for c in cells(grid)}
    assert len(cfgs) == 2 * 3 * 3
    one = cfgs[("lora", "chestxray14", 0.01)]
    assert one.split_lists.endswith("NIH_ChestX-ray") and one.label_fraction == 1 and one.fraction == 1.0
    assert one.layer_decay == 0.65 and one.hparams["alpha"] == 32 and one.hparams["targets"] == "qv"
    assert cfgs[("full", "chexpert", 1.0)].label_fraction == 100


def test_leaderboard_shows_medpeft_reported_numbers():
    from trainer.study.results import MEDPEFT_SOURCE, all_rows

    rows = all_rows(None)
    nih = rows[(rows["source"] == MEDPEFT_SOURCE) & (rows["dataset"] == "chestxray14") & (rows["method"] == "lora")]
    assert len(nih) == 1 and nih.iloc[0]["mean"] == pytest.approx(0.806) and nih.iloc[0]["fraction"] == 0.01


def test_foundation_grid_runs_medpeft_protocol_on_presets(tmp_path):
    grid = load_grid(GRIDS / "foundation_cxr.yaml")
    cfgs = {(c.method, c.dataset, c.backbone, c.fraction): cell_config(grid, c, tmp_path) for c in cells(grid)}
    assert len(cfgs) == 5 * 3 * 5 * 3
    mrm = cfgs[("lora", "chestxray14", "mrm", 0.01)]
    assert mrm.init_checkpoint.endswith("MRM.pth") and mrm.label_fraction == 1 and mrm.hparams["rank"] == 8
    rad = cfgs[("full", "rsna_pneumonia", "rad-dino", 1.0)]
    assert rad.init_checkpoint is None and rad.label_fraction == 100 and rad.lr == 0.0001
    assert {c.backbone for c in cells(grid)} == {"rad-dino", "medsiglip", "biomedclip", "mrm", "cxr-mae"}
