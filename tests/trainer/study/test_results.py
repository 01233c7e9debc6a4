"""trainer/results.py on the real reference CSV (Dutt et al. 2024, Tables 2-4) and fake local runs."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from trainer.study import plots as P
from trainer.study import results as R


@pytest.fixture(scope="module")
def ref() -> pd.DataFrame:
    return R.reference_rows()


def row(df, **match):
    sel = df
    for k, v in match.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, (match, len(sel))
    return sel.iloc[0]


def test_reference_rows_read_the_paper(ref):
    assert len(ref) == 166
    assert set(ref["source"]) == {R.REFERENCE_SOURCE}
    ssf = row(ref, backbone="resnet50", dataset="breastus", method="ssf")
    assert ssf["mean"] == pytest.approx(0.94) and ssf["std"] == pytest.approx(0.007)  # +-0.7 pp
    assert ssf["trainable_params"] == pytest.approx(60.6e3) and ssf["trainable_params_text"] == "60.6K"
    assert ssf["task"] == "classification" and ssf["metric"] == "f1_macro" and ssf["n_train"] == 584
    lp = row(ref, backbone="resnet50", dataset="breastus", method="linear_probe")
    assert lp["trainable_params"] == pytest.approx(5.5e3)  # the middle of the reported 3.8-7.2K
    fid = row(ref, task="generation", method="lora", n_train=226.0)
    assert fid["metric"] == "fid" and fid["mean"] == pytest.approx(14.88) and fid["std"] == pytest.approx(1.3)
    assert fid["fraction"] == pytest.approx(0.1)
    assert set(ref["backbone"]) == {"resnet50", "vit_base", "vit_large", "vit_huge", "stable_diffusion_unet"}
    assert math.isnan(row(ref, backbone="vit_base", dataset="ham10000", method="lora")["trainable_params"])


def test_helpers():
    assert R.backbone_key("resnet50.a1_in1k") == "resnet50"
    assert R.backbone_key("vit_base_patch16_224.augreg2_in21k_ft_in1k") == "vit_base"
    assert R.backbone_key("timm/vit_large_patch16_224") == "vit_large"
    assert R.backbone_key("tf_efficientnet_lite0.offline_in1k") == "tf_efficientnet_lite0"
    assert R.parse_param_count("23.5M") == pytest.approx(23.5e6)
    assert R.parse_param_count("343K") == pytest.approx(343e3)
    assert math.isnan(R.parse_param_count(""))
    assert R.format_params(1040) == "1.04K" and R.format_params(23_500_000) == "23.5M"
    assert P.pareto_front([(1, 0.5), (2, 0.4), (3, 0.7), (4, 0.7), (10, 0.9)]) == [(1, 0.5), (3, 0.7), (10, 0.9)]
    assert P.pareto_front([(1, 30.0), (2, 10.0), (3, 20.0)], higher_is_better=False) == [(1, 30.0), (2, 10.0)]


def test_average_ranks_on_a_hand_checked_subset(ref):
    sub = ref[(ref["backbone"] == "resnet50") & ref["dataset"].isin(["breastus", "ham10000"])]
    # breastus:  ssf .94 > batchnorm .92 > tsa .90 > bias .89 > full .72 > linear_probe .61
    # ham10000:  ssf .89 > full .87 > tsa .86 > batchnorm .84 > linear_probe .82 > bias .70
    expected_rank = {"ssf": 1.0, "tsa": 3.0, "batchnorm": 3.0, "full": 3.5, "bias": 5.0, "linear_probe": 5.5}
    expected_avg = {"ssf": 91.5, "tsa": 88.0, "batchnorm": 88.0, "full": 79.5, "bias": 79.5, "linear_probe": 71.5}
    s = R.summary(sub)
    assert len(s) == 6 and set(s["datasets"]) == {2}
    for _, r in s.iterrows():
        assert r["average rank"] == pytest.approx(expected_rank[r["method"]]), r["method"]
        assert r["average"] == pytest.approx(expected_avg[r["method"]]), r["method"]
    assert list(s["method"])[0] == "ssf" and list(s["method"])[-1] == "linear_probe"


def test_ties_share_the_average_rank_and_fid_is_lower_better(ref):
    # ResNet50 fitzpatrick17k: full .71 and ssf .71 tie for first -> 1.5 each.
    r = R.ranks(ref[(ref["backbone"] == "resnet50") & (ref["dataset"] == "fitzpatrick17k")])
    assert dict(zip(r["method"], r["rank"]))["full"] == 1.5 == dict(zip(r["method"], r["rank"]))["ssf"]
    gen = R.ranks(ref[(ref["task"] == "generation") & (ref["n_train"] == 2262)])
    ranks = dict(zip(gen["method"], gen["rank"]))
    assert ranks["bias_norm_attention"] == 1.0 and ranks["full"] == 2.0 and ranks["bias_norm"] == 8.0


def _write_run(folder, method, f1, std, params, fraction=1.0, task="classification", backbone="resnet50.a1_in1k"):
    folder.mkdir(parents=True)
    metric = {"fid": {"mean": f1, "std": std, "values": [f1]}} if task == "generation" else {
        "f1_macro": {"mean": f1, "std": std, "values": [f1 - std, f1 + std]},
        "accuracy": {"mean": 0.9, "std": 0.0, "values": [0.9, 0.9]}}
    (folder / "results.json").write_text(json.dumps({
        "kind": "medpeft-run", "task": task, "method": method, "backbone": backbone, "dataset": "breastus",
        "fraction": fraction, "n_train": int(584 * fraction), "seeds": [0, 1], "metrics": {"test": metric, "val": {}},
        "trainable_params": params, "total_params": 23_528_522, "adapter_dir": "seed_0/adapter",
        "wall_time_s": 12.0, "config": {"fraction": fraction}}))


def test_local_rows_read_results_json_and_ignore_others(tmp_path, caplog):
    _write_run(tmp_path / "a" / "ssf", "ssf", 0.91, 0.012, 60_600)
    _write_run(tmp_path / "b" / "full", "full", 0.80, 0.02, 23_528_522)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text("{not json")  # malformed: warned, skipped
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "results.json").write_text(json.dumps({"kind": "something-else", "score": 1}))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "results.json").write_text(json.dumps({"kind": "medpeft-run", "method": "x"}))  # incomplete
    (tmp_path / "a" / "ssf" / "history.json").write_text("[]")  # other JSON files are not results
    with caplog.at_level("WARNING"):
        local = R.local_rows(tmp_path)
    assert sorted(local["method"]) == ["full", "ssf"]
    assert any("not readable JSON" in m and "results.json" in m for m in caplog.messages)
    assert any("no test f1_macro" in m for m in caplog.messages)  # the incomplete run
    ssf = row(local, method="ssf")
    assert ssf["source"] == "local" and ssf["backbone"] == "resnet50" and ssf["mean"] == pytest.approx(0.91)
    assert ssf["std"] == pytest.approx(0.012) and ssf["n_seeds"] == 2 and ssf["path"] == "a/ssf"

    both = R.all_rows(tmp_path)
    board = R.leaderboard(both)
    assert list(board.columns) == R.LEADERBOARD_COLUMNS
    mine = board[board["source"] == "local"]
    assert set(zip(mine["method"], mine["mean ± std"], mine["trainable params"])) == {
        ("ssf", "91.0 ± 1.2", "60.6K"), ("full", "80.0 ± 2.0", "23.5M")}
    paper = board[(board["source"] == R.REFERENCE_SOURCE) & (board["backbone"] == "resnet50")
                  & (board["dataset"] == "breastus") & (board["method"] == "ssf")]
    assert list(paper["mean ± std"]) == ["94.0 ± 0.7"]
    # Local runs are ranked among themselves, never against the paper's numbers.
    s = R.summary(both)
    loc = s[s["source"] == "local"].set_index("method")
    assert loc.loc["ssf", "average rank"] == 1.0 and loc.loc["full", "average rank"] == 2.0
    fig = P.pareto_plot(both)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"ssf", "full", "Pareto front", "resnet50 (local)", "resnet50 (paper)"} <= set(labels)
    assert P.data_volume_plot(both) is None  # every fraction is 1.0


def test_data_volume_plot_when_fractions_vary(tmp_path):
    for frac, f1 in ((0.1, 0.7), (0.5, 0.8), (1.0, 0.85)):
        _write_run(tmp_path / f"lora_{frac}", "lora", f1, 0.01, 5000, fraction=frac)
    local = R.local_rows(tmp_path)
    assert sorted(local["fraction"]) == [0.1, 0.5, 1.0]
    fig = P.data_volume_plot(local)
    assert fig is not None
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [0.1, 0.5, 1.0] and list(line.get_ydata()) == pytest.approx([70, 80, 85])
    fig.savefig(tmp_path / "volume.png")
    # The Pareto plot uses the full training set only (one point per method at fraction 1.0).
    ax = P.pareto_plot(local).axes[0]
    (points,) = ax.collections
    assert [tuple(p) for p in points.get_offsets()] == [(5000.0, pytest.approx(85.0))]
    # The paper's Table 4 has two training-set sizes: a data-volume plot and summary rows for each.
    gen = R.reference_rows()[lambda d: d["task"] == "generation"]
    assert P.data_volume_plot(gen) is not None
    s = R.summary(gen)
    assert len(s) == 16 and sorted(set(s["fraction"])) == ["0.1", "1"]
    best = s[s["fraction"] == "0.1"].iloc[0]
    assert best["method"] == "bias_norm_attention" and best["average"] == pytest.approx(8.28)


def test_generation_rows_and_filters(tmp_path, ref):
    _write_run(tmp_path / "gen", "lora", 12.5, 0.4, 797_000, task="generation", backbone="stable_diffusion_unet")
    df = R.all_rows(tmp_path)
    gen = R.filter_rows(df, task=["generation"], method="lora")
    assert len(gen) == 3 and set(gen["metric"]) == {"fid"}
    board = R.leaderboard(gen)
    assert "12.50 ± 0.40" in set(board["mean ± std"]) and set(board["metric"]) == {"FID"}
    fig = P.pareto_plot(R.filter_rows(df, task="generation"))
    assert "lower is better" in fig.axes[0].get_ylabel()
    assert len(R.filter_rows(df, source=[])) == len(df)  # an empty filter keeps everything
    assert R.leaderboard(R.filter_rows(df, dataset="nope")).empty


def test_one_marker_and_colour_per_method_in_every_plot():
    from adapters import METHODS
    from trainer.study.plots import method_style

    styles = {m: method_style(m) for m in METHODS}
    assert styles == {m: method_style(m) for m in sorted(METHODS, reverse=True)}  # independent of order
    assert len(set(styles.values())) == len(styles)  # no two methods look alike
