"""``python -m trainer.perf`` end to end on a tiny backbone: well-formed JSON with ratios, the table,
the targets; and the data-pipeline mode. Mechanics only: no timing is asserted."""
from __future__ import annotations

import pytest

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from adapters.backbones import TINY_VIT
from trainer.study.perf import main as perf_main

pytestmark = pytest.mark.slow  # subprocess end-to-end runs of python -m trainer.perf
ROOT = Path(__file__).resolve().parents[3]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _finite_positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_perf_cli_writes_json_with_ratios_and_prints_the_table(tmp_path):
    out = tmp_path / "perf.json"
    cmd = [sys.executable, "-m", "trainer.perf", "--backbone", TINY_VIT, "--batch-size", "32",
           "--methods", "lora,vpt_shallow", "--steps", "2", "--warmup", "1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["kind"] == "medpeft-perf" and data["mode"] == "methods" and data["family"] == "vit"
    rows = {r["method"]: r for r in data["methods"]}
    assert list(rows) == ["full", "lora", "vpt_shallow"]  # full added first, as the reference
    full = rows["full"]
    assert full["ratios"]["train_time_vs_full"] == 1.0 and full["ratios"]["peak_memory_vs_full"] == 1.0
    for r in rows.values():
        assert "error" not in r, r
        assert r["trainable_params"] > 0 and r["total_params"] >= r["trainable_params"]
        for key in ("train_ms", "infer_ms", "images_per_s", "peak_mb", "saved_activations_mb"):
            assert _finite_positive(r[key]), (r["method"], key, r[key])
        for key in ("train_time_vs_full", "peak_memory_vs_full", "infer_vs_base"):
            assert _finite_positive(r["ratios"][key]), (r["method"], key, r["ratios"][key])
        assert r["frozen_with_grad"] == 0  # frozen weights get no gradients...
        assert r["optimizer_state_params"] == r["trainable_params"]  # ...and no optimizer state
    assert rows["lora"]["mergeable"] and _finite_positive(rows["lora"]["ratios"]["merged_vs_base"])
    assert rows["lora"]["merge_max_abs_diff"] < 1e-4
    assert not rows["vpt_shallow"]["mergeable"] and rows["vpt_shallow"]["merged_ms"] is None
    assert rows["lora"]["trainable_params"] < full["trainable_params"]
    assert _finite_positive(data["base"]["infer_ms"])
    names = [t["name"] for t in data["targets"]]
    assert "LoRA peak memory vs full" in names and "LoRA train step time vs full" in names
    assert all(t["pass"] in (True, False, None) for t in data["targets"])
    text = proc.stdout
    header = next(line for line in text.splitlines() if line.startswith("method"))
    for col in ("trainable", "train ms/step", "x full", "peak MB", "infer ms", "merged ms", "x base"):
        assert col in header
    assert any(line.startswith("vpt_shallow") and " n/a " in line for line in text.splitlines())
    assert "PASS" in text or "FAIL" in text


def test_data_pipeline_mode(tmp_path, capsys):
    out = tmp_path / "pipe.json"
    rc = perf_main(["--data-pipeline", "--backbone", TINY_VIT, "--batch-size", "8", "--workers", "0",
                    "--cache-images", "32", "--loader-batches", "3", "--steps", "2", "--warmup", "1",
                    "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["mode"] == "data-pipeline" and data["method"] == "lora"
    for key in ("loader_images_per_s", "model_images_per_s", "ratio"):
        assert _finite_positive(data[key])
    assert data["targets"][0]["target"] == 3.0
    assert "images/s" in capsys.readouterr().out
