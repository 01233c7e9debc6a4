"""The catalogue's reach: method counts per family, every method in the grids, `adapters list --json`,
and `trainer.perf --catalog` writing its table, CSV, JSON and Pareto plot."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adapters import METHODS, methods_for
from adapters.peft_tuners import TUNERS

ROOT = Path(__file__).resolve().parents[2]
NAMED = {"vit": "loha lokr ia3 oft boft hra vera fourierft vblora randlora shira c3a miss delora road hira adalora "
                "adapter_houlsby adapter_pfeiffer convpass fact_tt fact_tk repadapter mona prefix_tuning",
         "cnn": "loha lokr ia3 oft boft hra hira adalora conv_adapter", "unet": "loha lokr oft boft"}


def test_counts_and_every_named_method():
    counts = {f: len(methods_for(f)) for f in ("vit", "cnn", "unet")}
    assert counts["vit"] >= 37 and counts["cnn"] >= 18 and counts["unet"] >= 15, counts
    for family, names in NAMED.items():
        missing = [n for n in names.split() if family not in METHODS[n].families]
        assert not missing, (family, missing)


def test_bridge_is_one_table_and_non_identity_tuners_say_so():
    assert len({t.name for t in TUNERS}) == len(TUNERS) == 17
    assert {t.name for t in TUNERS if not t.identity_at_init} == {"fourierft", "vblora", "c3a"}
    for name in ("fourierft", "vblora", "c3a"):
        assert not METHODS[name].identity_at_init and "not the base model" in METHODS[name].summary


@pytest.mark.parametrize("family", ["vit", "cnn"])
def test_catalog_grid_lists_every_method(family):
    grid = yaml.safe_load((ROOT / "benchmarks" / f"catalog_{family}.yaml").read_text())
    assert sorted(grid["grid"]["method"]) == sorted(m.name for m in methods_for(family))


@pytest.mark.slow  # a subprocess over every method (~6 s)
def test_adapters_list_json():
    out = subprocess.run([sys.executable, "-m", "adapters", "list", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    rows = {r["method"]: r for r in json.loads(out)}
    assert set(rows) == set(METHODS)
    assert rows["repadapter"]["mergeable"] and not rows["mona"]["mergeable"] and rows["loha"]["peft"]


@pytest.mark.slow
def test_perf_catalog_writes_table_csv_json_and_plot(tmp_path):
    out = tmp_path / "catalog_tiny.json"
    subprocess.run([sys.executable, "-m", "trainer.perf", "--catalog", "--backbone", "medpeft_tiny_vit", "--img-size",
                    "32", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--methods", "lora,repadapter,mona",
                    "--mem-jobs", "1", "--threads", "1", "--json", str(out)], cwd=ROOT, check=True, timeout=600,
                   capture_output=True)
    data = json.loads(out.read_text())
    rows = {r["method"]: r for r in data["table"]}
    assert set(rows) == {"full", "lora", "repadapter", "mona"}
    assert rows["full"]["adapter x full"] == "1.0000" and rows["mona"]["mergeable"] == "no"
    full = next(r for r in data["methods"] if r["method"] == "full")
    lora = next(r for r in data["methods"] if r["method"] == "lora")
    assert lora["adapter_bytes"] < full["adapter_bytes"]
    with open(out.with_suffix(".csv")) as f:
        assert len(list(csv.DictReader(f))) == 4
    assert out.with_suffix(".md").read_text().count("\n| ") >= 5 and out.with_suffix(".png").stat().st_size > 1000
