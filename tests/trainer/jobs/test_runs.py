"""The Train tab's run folders, progress and form, without training: run-folder naming, atomic
results.json, the run an adapter came from, the summary of a finished run, the progress read from
job events, and the form validated through TrainConfig."""
from __future__ import annotations

import json
import math

import pytest

from adapters import OFFLINE_LITE0
from adapters.backbones import TINY_VIT, backbone_family
from trainer.config import ConfigError
from trainer.jobs import options
from trainer.jobs.progress import TrainProgress, elapsed, pct
from trainer.jobs.runs import new_run_dir, read_results, results_for_adapter, run_summary, write_results

RESULTS = {"method": "ssf", "backbone": OFFLINE_LITE0, "dataset": "imagefolder", "class_names": ["a", "b"],
           "adapter_dir": "seed_1/adapter", "trainable_params": 10, "total_params": 1000, "wall_time_s": 3.21,
           "per_seed": [{"seed": 0, "test": {"f1_macro": 0.1}},
                        {"seed": 1, "best_epoch": 2, "epochs_run": 3,
                         "test": {"f1_macro": 0.8, "accuracy": 0.9, "confusion_matrix": [[1, 0], [1, 2]],
                                  "per_class_f1": {"a": 0.7, "b": 0.9}}}]}


def test_run_dirs_are_named_safely_and_never_reused(tmp_path):
    first = new_run_dir(tmp_path, "  ", "my data.zip")
    assert first.parent == tmp_path / "trained" and first.name.startswith("my-data.zip-")
    first.mkdir(parents=True)
    second = new_run_dir(tmp_path, "  ", "my data.zip")
    assert second != first and second.name.startswith(first.name) and second.name.endswith("-2")
    assert new_run_dir(tmp_path, None, "..").name.startswith("run-")


def test_results_written_atomically_and_found_from_the_adapter(tmp_path):
    run = tmp_path / "run"
    (run / "seed_1" / "adapter").mkdir(parents=True)
    write_results(run, RESULTS)
    assert read_results(run) == json.loads(json.dumps(RESULTS))
    assert [p.name for p in run.iterdir() if p.is_file()] == ["results.json"]  # no temporary file left
    assert results_for_adapter(run / "seed_1" / "adapter")["method"] == "ssf"
    (run / "seed_0" / "adapter").mkdir(parents=True)
    assert results_for_adapter(run / "seed_0" / "adapter") is None  # another seed's folder: not this run's adapter
    assert results_for_adapter(tmp_path / "elsewhere" / "adapter") is None


def test_run_summary_uses_the_kept_seed(tmp_path):
    s = run_summary(RESULTS, tmp_path / "run", "trained/run/seed_1/adapter")
    assert s["test"] == {"f1_macro": 0.8, "accuracy": 0.9} and s["confusion_matrix"] == [[1, 0], [1, 2]]
    assert s["best_epoch"] == 2 and s["epochs_run"] == 3 and s["wall_time_s"] == 3.2
    assert s["adapter_dir"] == str((tmp_path / "run" / "seed_1" / "adapter").resolve())
    assert s["stopped_early_by_user"] is False and s["adapter_key"] == "trained/run/seed_1/adapter"


def test_progress_follows_hpo_trials_and_the_final_run():
    clock = iter(range(0, 1000, 30))
    p = TrainProgress(epochs=4, trials=2, trial_epochs=2, clock=lambda: next(clock))
    assert p.units == 2 * 2 + 4 and p.phase == "Quick HPO: trial 1 of 2" and p.fraction() == 0
    assert "preparing" in p.detail()
    p.update({"kind": "trial", "trial": 2, "epochs": 2, "lr": 0.003})
    p.update({"kind": "step", "epoch": 1, "step": 5, "steps": 10, "loss": 0.5})
    assert p.phase.startswith("Quick HPO: trial 2 of 2 (lr 0.003") and p.fraction() == pytest.approx(2.5 / 8)
    p.update({"kind": "epoch", "epoch": 1, "train_loss": 0.4, "val": {"headline": "f1_macro", "f1_macro": 0.625}})
    assert p.series == {"trial 2": [{"epoch": 1, "val": 0.625, "loss": 0.4}]} and p.best == "F1 62.5% (epoch 1)"
    p.update({"kind": "final", "lr": 0.001})
    assert p.label == "final run" and p.epochs == 4 and p.fraction() == pytest.approx(4 / 8) and p.loss is None
    assert "elapsed" in p.detail()


def test_pct_and_elapsed():
    assert pct(0.7345) == "73.5%" and pct(None) == "n/a" and pct(math.nan) == "n/a" and pct("x") == "n/a"
    assert elapsed(75) == "1:15" and elapsed(3725) == "1:02:05"


@pytest.mark.parametrize("name, family", [("vit_base_patch16_224.augreg2_in21k_ft_in1k", "vit"),
                                          ("deit_small_patch16_224.fb_in1k", "vit"), (TINY_VIT, "vit"),
                                          ("hf-hub:timm/vit_small_patch16_224.augreg_in21k", "vit"),
                                          ("resnet50.a1_in1k", "cnn"), (OFFLINE_LITE0, "cnn"), ("", "cnn")])
def test_backbone_family_from_the_name(name, family):
    assert backbone_family(name) == family


def test_methods_for_a_family_put_the_papers_pick_first():
    vit, cnn = options.method_names("vit"), options.method_names("cnn")
    assert vit[0] == "lora" and cnn[0] == "ssf" and "adaptformer" in vit and "adaptformer" not in cnn
    assert len(set(vit)) == len(vit)


def test_form_config_validates_through_train_config():
    cfg = options.form_config(backbone=None, method=None, epochs=3, batch_size=8, lr=0.005, img_size=64)
    assert (cfg.backbone, cfg.method, cfg.epochs, cfg.img_size, cfg.seeds) == (OFFLINE_LITE0, "ssf", 3, 64, [0])
    for kwargs, expected in ((dict(epochs=0), "epochs"), (dict(epochs=2.5), "whole number"),
                             (dict(batch_size=5000), "batch size"), (dict(lr=0), "lr"), (dict(lr="x"), "number"),
                             (dict(lr=2), "between 0 and 1"), (dict(img_size=8), "image size"),
                             (dict(method="adaptformer"), "not a PEFT method"),
                             (dict(backbone="no_such_net_xyz"), "unknown backbone")):
        args = dict(backbone=None, method=None, epochs=3, batch_size=8, lr=0.005, img_size=64) | kwargs
        with pytest.raises(ConfigError, match=expected):
            options.form_config(**args)
    assert options.hpo_trials(False, 99) == 0 and options.hpo_trials(True, 3) == 3
    with pytest.raises(ConfigError, match="HPO trials"):
        options.hpo_trials(True, 50)
