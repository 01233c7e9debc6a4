"""The classification trainer end to end: a real pretrained CNN really learns on real images,
runs are reproducible/resumable/refused when finished, YAML + flags resolve, multi-seed, HPO
with two workers on one study, and a 2-process distributed CPU run."""
from __future__ import annotations

import json
import math
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from adapters import OFFLINE_LITE0
from adapters.backbones import TINY_CNN
from adapters.io import load_adapter
from trainer.__main__ import main as trainer_main
from trainer.cli import parse_config
from trainer.config import ConfigError
from tests.helpers import write_digits, write_shapes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("shapes"))


def tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--method", "bitfit", "--dataset", "imagefolder", "--data-dir", str(data), "--backbone", TINY_CNN,
            "--no-pretrained", "--epochs", "2", "--batch-size", "8", "--lr", "1e-2", "--num-workers", "0",
            "--output-dir", str(out), *extra]


@pytest.mark.slow
def test_offline_pretrained_cnn_learns_real_digits(tmp_path):
    """SSF on ImageNet EfficientNet-Lite0 (offline weights) learns scikit-learn's handwritten digits
    far above chance (10%) within about a CPU-minute."""
    data = write_digits(tmp_path / "digits", per_class=30)
    out = tmp_path / "run"
    rc = trainer_main(["--method", "ssf", "--dataset", "imagefolder", "--data-dir", str(data),
                       "--backbone", OFFLINE_LITE0, "--img-size", "56", "--epochs", "3", "--patience", "3",
                       "--batch-size", "32", "--lr", "5e-3", "--num-workers", "0", "--output-dir", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    f1 = results["metrics"]["test"]["f1_macro"]["mean"]
    assert f1 > 0.6, f"test macro-F1 {f1:.3f}: the adapter did not learn"
    assert results["trainable_params"] < 0.05 * results["total_params"]


def test_run_outputs_and_adapter_reproduce_test_metrics(shapes, tmp_path):
    out = tmp_path / "run"
    assert trainer_main(tiny_args(shapes, out)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "medpeft-run" and results["method"] == "bitfit"
    assert set(results["metrics"]["test"]) >= {"f1_macro", "accuracy", "balanced_accuracy", "auroc"}
    sizes = results["split_sizes"]
    assert sum(sizes.values()) == 36 and min(sizes.values()) > 0
    splits = json.loads((out / "seed_0" / "splits.json").read_text())
    assert splits  # reproducible split written
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == "bitfit"
    assert len(json.loads((out / "seed_0" / "history.json").read_text())) == 2
    # The saved adapter is the one that was tested: reloading it reproduces the test metric.
    model, cfg = load_adapter(out / results["adapter_dir"], pretrained=False)
    assert cfg.class_names == ["left", "middle", "right"]
    assert cfg.metrics["test_f1_macro"] == pytest.approx(results["metrics"]["test"]["f1_macro"]["mean"])


def test_finished_run_is_not_overwritten(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert trainer_main(tiny_args(shapes, out, "--epochs", "1")) == 0
    before = (out / "results.json").read_text()
    assert trainer_main(tiny_args(shapes, out, "--epochs", "1")) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before


def test_resume_continues_from_the_last_epoch(shapes, tmp_path):
    out = tmp_path / "run"
    assert trainer_main(tiny_args(shapes, out, "--epochs", "2", "--keep-checkpoints")) == 0
    first = json.loads((out / "seed_0" / "history.json").read_text())
    (out / "results.json").unlink()  # as if killed after epoch 2 of 3 (a killed run keeps its checkpoint)
    assert trainer_main(tiny_args(shapes, out, "--epochs", "3", "--resume")) == 0
    history = json.loads((out / "seed_0" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[:2] == first


def test_several_seeds_give_mean_and_std(shapes, tmp_path):
    out = tmp_path / "run"
    assert trainer_main(tiny_args(shapes, out, "--epochs", "1", "--seeds", "0", "1")) == 0
    results = json.loads((out / "results.json").read_text())
    f1 = results["metrics"]["test"]["f1_macro"]
    assert len(f1["values"]) == 2 and f1["std"] >= 0
    assert (out / "seed_1" / "adapter" / "medpeft.json").is_file()


def test_yaml_defaults_cli_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"method": "lora", "lr": 0.5, "epochs": 7, "hparams": {"rank": 4}}))
    cfg = parse_config(["--config", str(cfg_file), "--lr", "0.01", "--lora-alpha", "16"])
    assert (cfg.method, cfg.lr, cfg.epochs) == ("lora", 0.01, 7)
    assert cfg.hparams["rank"] == 4 and cfg.hparams["alpha"] == 16
    with pytest.raises(ConfigError, match="hyper-parameter of 'adaptformer'"):
        parse_config(["--method", "lora", "--adaptformer-bottleneck", "8"])
    cfg_file.write_text(yaml.safe_dump({"learning_rate": 1}))
    with pytest.raises(ConfigError, match="unknown option"):
        parse_config(["--config", str(cfg_file)])


@pytest.mark.parametrize("argv,message", [
    (["--method", "nope"], "unknown method"),
    (["--fraction", "0"], "fraction"),
    (["--method", "batchnorm", "--hp", "rank=3"], "no hyper-parameter"),
])
def test_bad_configuration_is_a_plain_error(argv, message, capsys, tmp_path):
    assert trainer_main(argv + ["--output-dir", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err


def test_missing_data_dir_is_a_plain_error(tmp_path, capsys):
    rc = trainer_main(tiny_args(tmp_path / "does_not_exist", tmp_path / "run"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "results.json").exists()


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.mark.slow
def test_two_hpo_workers_share_one_study(shapes, tmp_path):
    import optuna

    study_dir = tmp_path / "study"
    storage = f"sqlite:///{study_dir / 'hpo.db'}"
    study_dir.mkdir()
    optuna.create_study(study_name="s", storage=storage, direction="maximize")  # no race on creation
    cmd = [sys.executable, "-m", "trainer.hpo", "--trials", "2", "--storage", storage, "--study-name", "s",
           *tiny_args(shapes, study_dir, "--epochs", "2")]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    study = optuna.load_study(study_name="s", storage=storage)
    assert len(study.trials) == 4
    assert len({t.number for t in study.trials}) == 4
    assert len({t.params["lr"] for t in study.trials}) == 4  # four different configurations
    best = parse_config(["--config", str(study_dir / "best.yaml")])
    assert best.lr == pytest.approx(study.best_trial.params["lr"])


@pytest.mark.slow
def test_two_process_distributed_cpu_run(shapes, tmp_path):
    out = tmp_path / "ddp"
    # --standalone: torchrun binds a free port itself (a port picked here could be taken before it starts)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "trainer", *tiny_args(shapes, out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    # Evaluation gathers both processes' shards: every test image counted once.
    cm = results["per_seed"][0]["test"]["confusion_matrix"]
    assert sum(map(sum, cm)) == results["split_sizes"]["test"]
    assert results["num_processes"] == 2  # two ranks really trained
    # each rank's epoch bar counts that rank's shard of the batches, not all of them (it would stop at 50%)
    n_train, batch = results["split_sizes"]["train"], 8
    batches = n_train // batch if n_train > batch else 1  # drop_last when there is more than one batch
    totals = {int(t) for t in re.findall(r"seed 0 epoch 1/2:\s+\d+%\|[^|]*\| \d+/(\d+)", proc.stderr)}
    assert totals == {math.ceil(batches / 2)}, proc.stderr[-2000:]


def test_interrupted_run_is_not_silently_restarted(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert trainer_main(tiny_args(shapes, out, "--epochs", "1")) == 0
    (out / "results.json").unlink()  # as if killed before the end
    checkpoint = sorted((out / "seed_0").rglob("*"))
    assert trainer_main(tiny_args(shapes, out, "--epochs", "1")) == 2
    assert "interrupted run" in capsys.readouterr().err
    assert sorted((out / "seed_0").rglob("*")) == checkpoint  # nothing overwritten


def test_resume_refuses_changed_settings_but_not_a_larger_epoch_budget(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    assert trainer_main(tiny_args(shapes, out, "--epochs", "1")) == 0
    (out / "results.json").unlink()
    config = (out / "config.yaml").read_text()
    assert trainer_main(tiny_args(shapes, out, "--epochs", "2", "--resume", "--lr", "0.5", "--img-size", "48")) == 2
    err = capsys.readouterr().err
    assert "img_size, lr (only epochs" in err and err.count("error:") == 1
    assert (out / "config.yaml").read_text() == config  # not rewritten
    assert trainer_main(tiny_args(shapes, out, "--epochs", "2", "--resume")) == 0


def test_every_file_of_a_run_honours_the_umask(shapes, tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o027)
    try:
        assert trainer_main(tiny_args(shapes, out, "--epochs", "1", "--cache-dir", str(tmp_path / "cache"))) == 0
    finally:
        os.umask(old)
    files = [p for p in list(out.rglob("*")) + list((tmp_path / "cache").rglob("*")) if p.is_file()]
    assert files and {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o640)}, \
        sorted((oct(p.stat().st_mode & 0o777), str(p.relative_to(tmp_path))) for p in files)


def test_evaluation_and_feature_extraction_show_progress(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_args(shapes, out, "--epochs", "1")
    args[args.index("bitfit")] = "linear_probe"
    assert trainer_main(args) == 0
    err = capsys.readouterr().err
    assert "features (train)" in err and "seed 0 val" in err and "seed 0 test" in err
