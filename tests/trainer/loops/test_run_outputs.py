"""What a finished run and an HPO keep: each tensor once (the adapter), per-image predictions whose
metrics scikit-learn recomputes to results.json's, and HPO trials that never see the test split."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from adapters.backbones import TINY_CNN
from tests.helpers.images import write_shapes
from trainer.data.index import DatasetIndex
from trainer.loops.fairness import subgroup_metrics, worst_group_text
from trainer.loops.metrics import classification_metrics
from trainer.loops.predictions import predictions_frame
from trainer.run_dir import RunDir, RunResults
from trainer.study.disk_use import TENSOR_SUFFIXES, disk_use

TENSORS = tuple(f"*{s}" for s in TENSOR_SUFFIXES)


def tensor_files(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for pattern in TENSORS for p in folder.rglob(pattern)}


def recomputed(df: pd.DataFrame, class_names: list[str], multilabel: bool) -> dict:
    """macro-F1, accuracy and AUROC of one split from predictions.csv alone, with scikit-learn."""
    P = df[[f"p_{c}" for c in class_names]].to_numpy()
    if multilabel:
        Y = df[[f"y_{c}" for c in class_names]].to_numpy(dtype=float)
        cols = [j for j in range(len(class_names)) if len(set(Y[:, j][~np.isnan(Y[:, j])])) == 2]
        aucs = [roc_auc_score(Y[~np.isnan(Y[:, j]), j], P[~np.isnan(Y[:, j]), j]) for j in cols]
        accs = [accuracy_score(Y[~np.isnan(Y[:, j]), j], P[~np.isnan(Y[:, j]), j] > 0.5) for j in
                range(len(class_names))]
        return {"auroc": float(np.mean(aucs)), "accuracy": float(np.mean(accs))}
    y, pred = df["label_index"].to_numpy(), P.argmax(1)
    present = sorted(set(y))
    out = {"f1_macro": f1_score(y, pred, average="macro", labels=present), "accuracy": accuracy_score(y, pred)}
    out["auroc"] = roc_auc_score(y, P[:, 1]) if len(class_names) == 2 else \
        roc_auc_score(y, P, multi_class="ovr", labels=list(range(len(class_names))))
    return out


def _index(n: int, classes: list[str], multilabel: bool, rng) -> DatasetIndex:
    labels = (rng.random((n, len(classes))) > 0.5).astype(np.float32) if multilabel else \
        np.arange(n) % len(classes)
    if multilabel:
        labels[0, 0] = -1  # an unknown label: left out of the metrics, empty in the file
    return DatasetIndex(name="synthetic", paths=[f"/data/img_{i:03d}.png" for i in range(n)], labels=labels,
                        class_names=classes, multilabel=multilabel, groups=[f"p{i // 2}" for i in range(n)],
                        subgroups={"sex": np.array(["F", "M"])[np.arange(n) % 2]})


@pytest.mark.parametrize("multilabel", [False, True])
def test_predictions_file_reproduces_the_metrics_with_scikit_learn(multilabel, tmp_path):
    rng = np.random.default_rng(0)
    classes = ["akiec", "bcc", "nv"]
    index = _index(60, classes, multilabel, rng)
    splits = {"val": np.arange(0, 30), "test": np.arange(30, 60)}
    outputs = {k: (torch.randn(len(v), 3, generator=torch.Generator().manual_seed(len(k))),
                   torch.as_tensor(index.labels[v])) for k, v in splits.items()}
    df = predictions_frame(outputs, index, splits, temperature=[1.5, 2.0, 0.5] if multilabel else 1.7)
    path = tmp_path / "predictions.csv"
    df.to_csv(path, index=False, float_format="%.9g")
    back = pd.read_csv(path)
    assert {"split", "image_id", "group", "sex"} <= set(back.columns)
    assert back["image_id"].iloc[0] == "img_000.png" and back["group"].iloc[0] == "p0"
    assert all(f"p_{c}" in back and f"calibrated_p_{c}" in back for c in classes)
    for name in ("val", "test"):
        ours = classification_metrics(*outputs[name], classes, multilabel)
        theirs = recomputed(back[back["split"] == name], classes, multilabel)
        for k, v in theirs.items():
            assert v == pytest.approx(ours[k], abs=1e-6), (name, k)
    if multilabel:
        assert pd.isna(back.loc[0, "y_akiec"])
        probs = torch.sigmoid(outputs["val"][0] / torch.tensor([1.5, 2.0, 0.5]))
        assert np.allclose(back[back.split == "val"][[f"calibrated_p_{c}" for c in classes]], probs, atol=1e-6)


def test_one_scored_group_is_not_a_comparison():
    logits, y = torch.randn(40, 2), torch.arange(40) % 2
    sex = np.array(["F"] * 35 + ["M"] * 5)
    entry = subgroup_metrics(logits, y, {"sex": sex}, ["neg", "pos"], min_size=30)["attributes"]["sex"]
    assert entry["scored_groups"] == 1 and entry["worst_group"] is None and entry["gap"] is None
    assert worst_group_text(entry, lambda v: f"{v:.2f}") == "n/a: 1 group scored"
    both = subgroup_metrics(logits, y, {"sex": np.array(["F", "M"] * 20)}, ["neg", "pos"], min_size=5)
    assert worst_group_text(both["attributes"]["sex"], lambda v: f"{v:.2f}").startswith("worst ")


def test_search_trial_results_name_no_test_split():
    data = {"kind": "medpeft-run", "split_sizes": {"train": 5, "val": 2, "test": 3},
            "config": {"test_frac": 0.2, "lr": 1.0}, "per_seed": [{"seed": 0, "test": None,
                                                                   "split_sizes": {"val": 2, "test": 3}}]}
    trial = RunResults.search_trial(data)
    assert trial["kind"] == "medpeft-search-trial" and "test" not in json.dumps(trial)


# ------------------------------------------------------------------------------------------- real runs
def args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--method", "bitfit", "--dataset", "imagefolder", "--data-dir", str(data), "--backbone", TINY_CNN,
            "--no-pretrained", "--epochs", "2", "--batch-size", "8", "--lr", "1e-2", "--num-workers", "0",
            "--bootstrap-resamples", "50", "--output-dir", str(out), *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("outputs") / "data", per_class=12)


@pytest.mark.slow
def test_a_finished_run_keeps_each_tensor_once_and_its_predictions(data, tmp_path, capsys):
    from trainer.__main__ import main

    out = tmp_path / "run"
    assert main(args(data, out, "--seeds", "0", "1")) == 0
    results = json.loads((out / "results.json").read_text())
    kept = tensor_files(out)
    assert sorted(kept) == ["seed_0/adapter/adapter_model.safetensors", "seed_1/adapter/adapter_model.safetensors"]
    assert not (out / ".in_use").exists()
    use = disk_use(out.parent)
    assert use.iloc[-1]["tensor_bytes"] == sum(kept.values())
    for seed in results["per_seed"]:
        df = pd.read_csv(out / f"seed_{seed['seed']}" / "predictions.csv")
        assert list(df["split"].value_counts().sort_index().index) == ["test", "val"]
        assert (df["split"] == "test").sum() == results["split_sizes"]["test"]
        for split in ("val", "test"):
            theirs = recomputed(df[df["split"] == split], results["class_names"], False)
            for k, v in theirs.items():
                assert v == pytest.approx(seed[split][k], abs=1e-6), (split, k)

    kept_out = tmp_path / "kept"
    assert main(args(data, kept_out, "--epochs", "1", "--keep-checkpoints")) == 0
    assert {"seed_0/best.safetensors", "seed_0/checkpoint/adapter.safetensors",
            "seed_0/checkpoint/trainer_state.pt"} < set(tensor_files(kept_out))

    from trainer.study.benchmark import main as benchmark_main

    capsys.readouterr()
    assert benchmark_main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("disk use")]
    named = [line.split()[2] for line in printed]
    assert {"kept", "run"} <= set(named) and named[-1] == "total"  # the report's own files: "(other files)"
    assert (tmp_path / "report" / "disk_use.csv").is_file()


@pytest.mark.slow
def test_hpo_trials_never_see_the_test_split_and_only_the_best_keeps_its_adapter(data, tmp_path, capsys):
    import optuna

    from trainer.study.hpo import main as hpo_main

    study = tmp_path / "study"
    assert hpo_main(args(data, study, "--trials", "3", "--min-resource", "1")) == 0
    trials = sorted(study.glob("trial_*"))
    assert len(trials) == 3
    best = optuna.load_study(study_name="bitfit-imagefolder", storage=f"sqlite:///{study / 'hpo.db'}").best_trial
    assert all("test" not in t.user_attrs for t in [best])
    for trial in trials:
        results = json.loads((trial / "results.json").read_text())
        assert results["kind"] == "medpeft-search-trial"

        def keys(node):
            if isinstance(node, dict):
                for k, v in node.items():
                    yield k
                    yield from keys(v)
            elif isinstance(node, list):
                for v in node:
                    yield from keys(v)

        for f in trial.rglob("*.json"):
            assert not [k for k in keys(json.loads(f.read_text())) if str(k).startswith("test")], f
        preds = pd.read_csv(trial / "seed_0" / "predictions.csv")
        assert set(preds["split"]) == {"val"}
        assert not (trial / "seed_0" / "reliability.png").exists()  # drawn on the test split: not for a trial
    assert sorted(tensor_files(study)) == [f"trial_{best.number:04d}/seed_0/adapter/adapter_model.safetensors"]
    # the best configuration's run tests once
    best_yaml = study / "best.yaml"
    from trainer.__main__ import main

    assert main(["--config", str(best_yaml), "--epochs", "1", "--output-dir", str(tmp_path / "best")]) == 0
    assert "test" in json.loads((tmp_path / "best" / "results.json").read_text())["metrics"]


def test_drop_checkpoints_and_weights(tmp_path):
    run = RunDir(tmp_path, [0, 1])
    for seed in (0, 1):
        for rel in ("checkpoint/adapter.safetensors", "checkpoint/trainer_state.pt", "best.safetensors",
                    "adapter/adapter_model.safetensors", "history.json"):
            p = run.seed_dir(seed) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")
    run.drop_checkpoints()
    assert sorted(tensor_files(tmp_path)) == ["seed_0/adapter/adapter_model.safetensors",
                                              "seed_1/adapter/adapter_model.safetensors"]
    run.drop_weights()
    assert not tensor_files(tmp_path) and (tmp_path / "seed_1" / "history.json").exists()


def test_disk_use_per_results_folder(tmp_path):
    from trainer.study.disk_use import disk_use_lines

    for rel, size in {"cell_a/results.json": 10, "cell_a/.seeds/seed_0/adapter/adapter_model.safetensors": 100,
                      "cell_a/.seeds/seed_0/results.json": 5, "cell_b/results.json": 7, "studies.db": 50}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * size)
    df = disk_use(tmp_path).set_index("folder")
    assert df.loc["cell_a", "bytes"] == 115 and df.loc["cell_a", "tensor_bytes"] == 100
    assert df.loc["cell_b", "bytes"] == 7 and df.loc["(other files)", "bytes"] == 50
    assert df.loc["total", "bytes"] == 172 and df.loc["total", "files"] == 5
    lines = disk_use_lines(tmp_path)
    assert lines[0].startswith("disk use  cell_a") and "115 B" in lines[0] and lines[-1].startswith("disk use  total")


def test_storage_faults_wrapped_by_libraries_are_recognised():
    import errno

    from trainer.preflight import describe_storage_error

    assert "ENOSPC" in describe_storage_error(OSError(errno.ENOSPC, "No space left on device", "/x/results.json"))
    assert "/x/results.json" in describe_storage_error(OSError(errno.ENOSPC, "No space", "/x/results.json"))
    rust = Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })')
    assert "ENOSPC" in describe_storage_error(rust)
    assert "EROFS" in describe_storage_error(Exception("(sqlite3.OperationalError) attempt to write a readonly database"))
    assert describe_storage_error(ValueError("a bug")) is None
