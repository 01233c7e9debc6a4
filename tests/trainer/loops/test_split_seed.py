"""One split across training seeds (Dutt et al. report mean +- std over seeds on one test set):
by default every seed trains, validates and tests on the same images; --resplit-per-seed draws a
split per seed."""
from __future__ import annotations

import json

import pytest

from adapters.backbones import TINY_CNN
from tests.helpers import write_shapes
from trainer.__main__ import main as trainer_main


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("shapes"), per_class=10)


def _splits(run, seed):
    doc = json.loads((run / f"seed_{seed}" / "splits.json").read_text())
    return {k: sorted(v) for k, v in doc["splits"].items()}, doc["meta"]


def _run(data, out, *extra):
    rc = trainer_main(["--method", "bitfit", "--dataset", "imagefolder", "--data-dir", str(data),
                       "--backbone", TINY_CNN, "--no-pretrained", "--epochs", "1", "--batch-size", "8",
                       "--num-workers", "0", "--img-size", "32", "--seeds", "0", "1", "--output-dir", str(out),
                       *extra])
    assert rc == 0
    return json.loads((out / "results.json").read_text())


def test_seeds_share_one_split_by_default(shapes, tmp_path):
    results = _run(shapes, tmp_path / "one")
    a, meta_a = _splits(tmp_path / "one", 0)
    b, meta_b = _splits(tmp_path / "one", 1)
    assert a == b and a["test"]
    assert meta_a == {"split_seed": 0, "train_seed": 0} and meta_b == {"split_seed": 0, "train_seed": 1}
    assert [p["split_seed"] for p in results["per_seed"]] == [0, 0]


def test_resplit_per_seed_draws_a_split_per_seed(shapes, tmp_path):
    results = _run(shapes, tmp_path / "re", "--resplit-per-seed")
    a, _ = _splits(tmp_path / "re", 0)
    b, _ = _splits(tmp_path / "re", 1)
    assert a["test"] != b["test"]
    assert [p["split_seed"] for p in results["per_seed"]] == [0, 1]
