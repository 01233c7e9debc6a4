"""Fairness and calibration in every result: a real (tiny) training run carries subgroup metrics,
calibration before/after temperature scaling, the test interval and a reliability diagram into
results.json, the adapter config, load_adapter, the Predictor, the model card, the leaderboard, the
benchmark report; --select-on worst_group selects on the worst subgroup; bad inputs are one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from adapters.backbones import TINY_CNN
from tests.helpers.images import write_shapes
from trainer.__main__ import main as trainer_main


def with_metadata(folder: Path) -> Path:
    """Shapes with a metadata CSV: sex alternating, ages over four bins."""
    rows = [{"path": p.relative_to(folder).as_posix(), "sex": "F" if i % 2 else "M", "age": 25 + (i * 7) % 65}
            for i, p in enumerate(sorted(folder.rglob("*.png")))]
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    return folder


def args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--method", "bitfit", "--dataset", "imagefolder", "--data-dir", str(data), "--backbone", TINY_CNN,
            "--no-pretrained", "--epochs", "2", "--batch-size", "8", "--lr", "1e-2", "--num-workers", "0",
            "--group-columns", "sex,age", "--min-group-size", "5", "--bootstrap-resamples", "200",
            "--output-dir", str(out), *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("assess")
    data = with_metadata(write_shapes(root / "data", per_class=30))
    out = root / "runs" / "shapes-bitfit"
    assert trainer_main(args(data, out)) == 0
    return {"data": data, "out": out, "results": json.loads((out / "results.json").read_text())}


def test_results_carry_calibration_subgroups_and_interval(run):
    r = run["results"]
    seed = r["per_seed"][0]["assessment"]
    n_test = r["split_sizes"]["test"]
    sex = seed["subgroups"]["test"]["attributes"]["sex"]
    assert sum(g["n"] for g in sex["groups"].values()) == n_test  # the whole split, every image once
    assert set(sex["groups"]) == {"F", "M"} and sex["worst_group"] in {"F", "M"}
    age = seed["subgroups"]["test"]["attributes"]["age"]
    assert list(age["groups"]) == sorted(age["groups"], key=lambda v: (v[0] != "<", v))[:len(age["groups"])] \
        or list(age["groups"])[0].startswith("<")  # youngest first
    small = [v for v, g in age["groups"].items() if g["n"] < 5]
    assert all(not age["groups"][v]["scored"] and age["groups"][v]["score"] is None for v in small)
    assert set(r["fairness"]) == {"val", "test"}
    assert r["fairness"]["test"]["attributes"]["sex"]["gap"]["mean"] == pytest.approx(sex["gap"])
    cal = seed["calibration"]
    assert cal["fitted_on"] == "val" and cal["temperature"] > 0
    assert cal["val"]["after"]["nll"] <= cal["val"]["before"]["nll"] + 1e-6  # fitted to minimise val NLL
    assert r["calibration"]["test"]["before"]["ece"]["mean"] == pytest.approx(cal["test"]["before"]["ece"])
    ci = r["test_interval"]
    assert ci["low"] <= ci["estimate"] <= ci["high"] and ci["n_resamples"] == 200
    assert ci["estimate"] == pytest.approx(r["metrics"]["test"]["f1_macro"]["mean"])
    png = run["out"] / "seed_0" / seed["reliability"]
    assert png.is_file() and Image.open(png).size[0] > 200
    assert r["selected_on"] == "headline"


def test_temperature_reaches_load_adapter_and_the_predictor(run):
    from adapters.io import load_adapter
    from trainer.infer import Predictor

    folder = run["out"] / run["results"]["adapter_dir"]
    calibrated, config = load_adapter(folder)
    raw, _ = load_adapter(folder, calibrated=False)
    t = config.temperature
    assert t == pytest.approx(run["results"]["per_seed"][0]["assessment"]["calibration"]["temperature"])
    assert config.calibration["test"]["after"]["ece"] == pytest.approx(
        run["results"]["per_seed"][0]["assessment"]["calibration"]["test"]["after"]["ece"])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        zc, zr = calibrated(x), raw(x)
    assert torch.allclose(zc, zr / t, atol=1e-6) and torch.equal(zc.argmax(1), zr.argmax(1))
    image = Image.open(next(run["data"].rglob("*.png"))).convert("RGB")
    pred = Predictor(pretrained=False).predict(str(folder), image)
    assert pred.calibrated
    lm_raw = Predictor(pretrained=False)
    lm = lm_raw.load(str(folder))
    x1, _ = lm_raw._tensor(lm, image)  # the Predictor's own preprocessing
    with torch.no_grad():
        expected = torch.softmax(lm.model(x1)[0] / t, dim=0)
    assert list(pred.probs.values()) == pytest.approx(expected.tolist(), abs=1e-5)


def test_card_leaderboard_and_report_show_them(run, tmp_path):
    from huggingface_hub import ModelCard

    from adapters.io import read_config
    from trainer.card import build_model_card
    from trainer.study import results as R
    from trainer.study.fairness_views import subgroup_attributes, subgroup_view
    from trainer.study.report import write_report

    folder = run["out"] / run["results"]["adapter_dir"]
    card = ModelCard(build_model_card(read_config(folder), results=run["results"]))
    names = [e.metric_name for e in card.data.eval_results]
    assert any("sex = F" in n for n in names) and any("sex = M" in n for n in names)
    assert sum(e.metric_type == "ece" for e in card.data.eval_results) == 2
    assert any(e.metric_type == "f1_macro_ci95_low" for e in card.data.eval_results)
    assert "## Calibration and subgroups" in card.text and "| F |" in card.text

    rows = R.local_rows(run["out"].parent)
    row = rows.iloc[0]
    worst = min(a["worst_score"]["mean"] for a in run["results"]["fairness"]["test"]["attributes"].values()
                if a["worst_score"])
    assert row["worst_group"] == pytest.approx(worst) and "=" in row["worst_group_name"]
    assert row["ece"] == pytest.approx(run["results"]["calibration"]["test"]["before"]["ece"]["mean"])
    board = R.leaderboard(rows)
    assert board.iloc[0]["worst group"].endswith(f"({row['worst_group_name']})") and "→" in board.iloc[0]["ECE"]
    assert subgroup_attributes(rows) == ["age", "sex"]
    view = subgroup_view(rows, "sex")
    assert list(view.columns[:7]) == ["backbone", "dataset", "method", "fraction", "overall", "F", "M"]
    written = write_report(run["out"].parent, tmp_path / "report")
    md = next(p for p in written if p.suffix == ".md").read_text()
    assert "## Fairness and calibration per cell" in md and "### Test score by sex" in md


def test_select_on_worst_group_and_bad_inputs(run, tmp_path, capsys):
    out = tmp_path / "fair"
    assert trainer_main(args(run["data"], out, "--select-on", "worst_group", "--epochs", "1")) == 0
    r = json.loads((out / "results.json").read_text())
    history = json.loads((out / "seed_0" / "history.json").read_text())
    assert r["selected_on"] == "worst_group" and "worst_group_score" in history[0]
    from trainer.study.hpo import validation_objective

    assert validation_objective(r) == pytest.approx(r["fairness"]["val"]["worst_group_score"]["mean"])
    capsys.readouterr()
    plain = tmp_path / "plain"
    write_shapes(plain, per_class=8)
    cases = [  # (extra flags, data folder, words of the one-line error)
        (["--select-on", "worst_group"], plain, "needs subgroups"),
        (["--age-bins", "60,40"], run["data"], "age bins"),
        (["--select-on", "best"], run["data"], "select"),
        (["--min-group-size", "0"], run["data"], "min-group-size"),
    ]
    for extra, data, words in cases:
        flags = [a for a in args(data, tmp_path / "bad", *extra)]
        if data is plain:
            i = flags.index("--group-columns")
            del flags[i:i + 2]
        assert trainer_main(flags) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert err and err[0].startswith("error:") and words in err[0], (extra, err)
        assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "bad").exists()  # nothing written
    ham = tmp_path / "ham"
    ham.mkdir()
    assert trainer_main(["--method", "bitfit", "--dataset", "ham10000", "--data-dir", str(ham), "--backbone", TINY_CNN,
                         "--no-pretrained", "--group-columns", "sex", "--output-dir", str(tmp_path / "h")]) == 2
    assert "no such subgroups" in capsys.readouterr().err


def test_index_subgroups_follow_the_split_rows():
    from trainer.data.index import DatasetIndex
    from trainer.loops.assess import split_subgroups

    index = DatasetIndex("d", [f"{i}.png" for i in range(6)], np.array([0, 1, 0, 1, 0, 1]), ["a", "b"],
                         subgroups={"sex": ["F", "M", "F", "M", "unknown", "F"]})
    assert split_subgroups(index, [5, 0, 4])["sex"].tolist() == ["F", "F", "unknown"]


def test_grid_objective_worst_group_selects_on_it(tmp_path):
    from trainer.config import ConfigError
    from trainer.study.grid import cell_config, cells

    grid = {"grid": {"method": ["bitfit"], "dataset": ["imagefolder"]}, "seeds": [0],
            "base": {"data_dir": str(tmp_path)}, "hpo": {"trials": 2, "objective": "worst_group"}}
    cell = cells(grid)[0]
    assert cell_config(grid, cell, tmp_path).select_on == "worst_group"
    grid["hpo"]["objective"] = "fairest"
    with pytest.raises(ConfigError, match="objective"):
        cell_config(grid, cell, tmp_path)


def test_a_benchmark_cell_merges_every_seeds_assessment(run):
    import copy

    from trainer.study.seeds import merge_seed_results

    one = run["results"]
    two = copy.deepcopy(one)
    p = two["per_seed"][0]
    p["seed"] = 1
    p["assessment"]["calibration"]["test"]["before"]["ece"] += 0.1
    p["assessment"]["test_interval"]["low"] = -1.0
    p["val"]["f1_macro"] += 1.0  # the better seed by validation
    merged = merge_seed_results([one, two], [".seeds/seed_0", ".seeds/seed_1"])
    ece = merged["calibration"]["test"]["before"]["ece"]
    assert ece["n"] == 2 and ece["mean"] == pytest.approx(
        one["per_seed"][0]["assessment"]["calibration"]["test"]["before"]["ece"] + 0.05)
    assert merged["test_interval"]["seed"] == 1 and merged["test_interval"]["low"] == -1.0
    assert merged["fairness"]["test"]["worst_group_score"]["n"] == 2


def test_card_lists_per_class_auroc_of_a_multilabel_adapter():
    from adapters.backbones import TINY_VIT
    from adapters.io import AdapterConfig
    from trainer.card import build_model_card

    config = AdapterConfig(method="lora", backbone=TINY_VIT, num_classes=3, class_names=["a", "b", "c"],
                           task="multilabel", pretrained=False, training={"seed": 0})
    test = {"headline": "auroc", "auroc": 0.75, "auroc_per_class": {"a": 0.7, "b": 0.8, "c": None}}
    results = {"per_seed": [{"seed": 0, "test": test}], "metrics": {"test": {"auroc": {"mean": 0.75, "std": 0.0,
                                                                                        "values": [0.75]}}}}
    text = build_model_card(config, results)
    assert "test AUROC per class (seed 0" in text and "a 0.7000, b 0.8000, c undefined" in text
