"""A corpus of bad command lines: each ends in exit status 2 with exactly one ``error:`` line on stderr,
no traceback, and nothing written in the output folder (nor a default ``runs/`` folder). Run in-process
(``trainer.__main__.main``) for speed; the Hub is off (``HF_HUB_OFFLINE=1``) so nothing waits on it."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapters.backbones import TINY_CNN, TINY_VIT
from trainer.__main__ import main
from trainer.cli import build_parser, parse_config
from trainer.config import FIELDS, RANGES, ConfigError, TrainConfig
from tests.helpers import write_shapes


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    shapes = write_shapes(root / "shapes")
    one = root / "one_class" / "only"
    one.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(one / f"{i}.png")
    few = write_shapes(root / "few", per_class=12)  # one class of 2 images: a 5% fraction leaves it no train image
    for p in sorted((few / "right").iterdir())[2:]:
        p.unlink()
    bad = write_shapes(root / "corrupt", per_class=4)
    (bad / "left" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "empty").mkdir()
    (root / "a_file.txt").write_text("not a folder")
    yaml_dir = root / "yaml"
    yaml_dir.mkdir()
    for name, text in {"syntax.yaml": "epochs: [1, 2\n", "list.yaml": "- epochs\n- 3\n",
                       "unknown.yaml": "epochz: 3\n", "type.yaml": "epochs: ten\n", "hparams.yaml": "hparams: 3\n",
                       "range.yaml": "lr: -1.0\n", "binary.yaml": ""}.items():
        (yaml_dir / name).write_text(text)
    (yaml_dir / "binary.yaml").write_bytes(b"\xff\xfe\x00\x00garbage")
    return {"shapes": shapes, "one": root / "one_class", "few": few, "corrupt": bad, "empty": root / "empty",
            "file": root / "a_file.txt", "yaml": yaml_dir, "missing": root / "does_not_exist"}


def good(data: str = "{shapes}") -> list[str]:
    return ["--method", "bitfit", "--dataset", "imagefolder", "--data-dir", data, "--backbone", TINY_CNN,
            "--no-pretrained", "--epochs", "1", "--batch-size", "8", "--num-workers", "0"]


def gen(*extra: str) -> list[str]:
    return ["--task", "generation", "--method", "lora", "--dataset", "csv", "--data-dir", "{shapes}",
            "--base-model", "someone/some-stable-diffusion", *extra]


CASES: dict[str, tuple[list[str], str]] = {
    # numbers out of range, one or more per numeric option
    "img_size_negative": (good() + ["--img-size", "-5"], "img_size (--img-size) must be an integer in [16, 4096]"),
    "img_size_zero": (good() + ["--img-size", "0"], "--img-size"),
    "img_size_huge": (good() + ["--img-size", "100000"], "--img-size"),
    "epochs_zero": (good() + ["--epochs", "0"], "--epochs"),
    "epochs_negative": (good() + ["--epochs", "-3"], "--epochs"),
    "patience_zero": (good() + ["--patience", "0"], "--patience"),
    "batch_size_zero": (good() + ["--batch-size", "0"], "--batch-size"),
    "lr_zero": (good() + ["--lr", "0"], "--lr"),
    "lr_negative": (good() + ["--lr", "-1e-3"], "--lr"),
    "lr_nan": (good() + ["--lr", "nan"], "finite"),
    "lr_inf": (good() + ["--lr", "inf"], "finite"),
    "weight_decay_negative": (good() + ["--weight-decay", "-0.1"], "--weight-decay"),
    "warmup_negative": (good() + ["--warmup-epochs", "-1"], "--warmup-epochs"),
    "warmup_longer_than_run": (good() + ["--warmup-epochs", "5"], "--warmup-epochs"),
    "label_smoothing_one": (good() + ["--label-smoothing", "1"], "--label-smoothing"),
    "grad_clip_negative": (good() + ["--grad-clip", "-1"], "--grad-clip"),
    "num_workers_negative": (good() + ["--num-workers", "-1"], "--num-workers"),
    "fraction_zero": (good() + ["--fraction", "0"], "--fraction"),
    "fraction_above_one": (good() + ["--fraction", "1.5"], "--fraction"),
    "val_frac_one": (good() + ["--val-frac", "1"], "--val-frac"),
    "test_frac_negative": (good() + ["--test-frac", "-0.1"], "--test-frac"),
    "fracs_leave_no_train": (good() + ["--val-frac", "0.5", "--test-frac", "0.5"], "leave images to train on"),
    "max_steps_zero": (good() + ["--max-steps-per-epoch", "0"], "--max-steps-per-epoch"),
    "seed_negative": (good() + ["--seeds", "-1"], "--seeds"),
    "seed_twice": (good() + ["--seeds", "0", "0"], "twice"),
    "resolution_zero": (gen("--resolution", "0"), "--resolution"),
    "resolution_not_multiple_of_8": (gen("--resolution", "100"), "multiple of 8"),
    "max_train_steps_zero": (gen("--max-train-steps", "0"), "--max-train-steps"),
    "validation_steps_negative": (gen("--validation-steps", "-1"), "--validation-steps"),
    "inference_steps_zero": (gen("--num-inference-steps", "0"), "--num-inference-steps"),
    "guidance_negative": (gen("--guidance-scale", "-2"), "--guidance-scale"),
    "fid_samples_negative": (gen("--fid-samples", "-1"), "--fid-samples"),
    "fid_samples_one": (gen("--fid-samples", "1"), "--fid-samples"),
    "lora_rank_zero": (good() + ["--method", "lora", "--lora-rank", "0"], "lora hyper-parameter rank (--lora-rank)"),
    "lora_dropout_above_one": (good() + ["--method", "lora", "--lora-dropout", "1.5"], "dropout"),
    "lora_alpha_negative": (good() + ["--method", "lora", "--hp", "alpha=-4"], "alpha"),
    "vpt_prompts_zero": (good() + ["--method", "vpt_deep", "--backbone", TINY_VIT, "--vpt-deep-num-prompts", "0"],
                         "num_prompts"),
    # wrong types
    "lora_rank_word": (good() + ["--method", "lora", "--lora-rank", "four"],
                       "argument --lora-rank: invalid int value: 'four' (see --help)"),
    "epochs_float": (good() + ["--epochs", "2.5"], "invalid int value"),
    "lr_word": (good() + ["--lr", "fast"], "invalid float value"),
    "seeds_words": (good() + ["--seeds", "a", "b"], "invalid int value"),
    "hp_rank_word": (good() + ["--method", "lora", "--hp", "rank=four"], "must be an integer"),
    "hp_bool_word": (good() + ["--method", "adaptformer", "--backbone", TINY_VIT,
                               "--adaptformer-learnable-scale", "maybe"], "true or false"),
    "missing_value": (good() + ["--epochs"], "expected one argument"),
    # unknown names
    "unknown_method": (good() + ["--method", "nope"], "unknown method 'nope'"),
    "unknown_dataset": (good() + ["--dataset", "nope"], "unknown dataset 'nope'"),
    "unknown_backbone": (good() + ["--backbone", "resnet1800"], "close timm names: resnet18"),
    "unknown_pretrained_tag": (good() + ["--backbone", "resnet50.bogus_tag"], "no pretrained weights tagged"),
    "unknown_task": (good() + ["--task", "segmentation"], "--task"),
    "unknown_precision": (good() + ["--mixed-precision", "fp8"], "--mixed-precision"),
    "unknown_flag": (good() + ["--epochz", "3"], "did you mean --epochs"),
    "unknown_hparam": (good() + ["--method", "lora", "--hp", "nope=1"], "no hyper-parameter"),
    "hparam_of_method_without_any": (good() + ["--method", "batchnorm", "--hp", "rank=3"], "no hyper-parameter"),
    "hparam_flag_of_other_method": (good() + ["--method", "lora", "--adaptformer-bottleneck", "8"],
                                    "hyper-parameter of 'adaptformer'"),
    "lora_targets_unknown": (good() + ["--method", "lora", "--lora-targets", "nope"], "targets"),
    "push_to_hub_bad_id": (good() + ["--push-to-hub", "not a repo id!"], "--push-to-hub"),
    # data folders and layouts
    "data_dir_missing": (good("{missing}"), "does not exist"),
    "data_dir_is_file": (good("{file}"), "is a file"),
    "data_dir_empty": (good("{empty}"), "{empty}"),
    "no_data_dir": (good()[:4] + good()[6:], "--data-dir is required"),
    "wrong_layout_ham10000": (good() + ["--dataset", "ham10000"], "HAM10000"),
    "wrong_layout_chestxray14": (good() + ["--dataset", "chestxray14"], "Data_Entry"),
    "single_class": (good("{one}"), "class"),
    "unknown_dataset_option": (good() + ["--dataset-option", "bogus=1"], "bogus"),
    "dataset_option_without_value": (good() + ["--dataset-option", "bogus"], "KEY=VALUE"),
    "corrupt_image": (good("{corrupt}"), "--skip-bad-images"),
    # YAML
    "yaml_missing": (good() + ["--config", "{yaml}/nope.yaml"], "not found"),
    "yaml_syntax": (good() + ["--config", "{yaml}/syntax.yaml"], "not valid YAML"),
    "yaml_not_a_mapping": (good() + ["--config", "{yaml}/list.yaml"], "mapping"),
    "yaml_unknown_key": (good() + ["--config", "{yaml}/unknown.yaml"], "did you mean epochs"),
    "yaml_wrong_type": (good()[:-6] + ["--config", "{yaml}/type.yaml"], "epochs (--epochs) must be an integer"),
    "yaml_hparams_not_mapping": (good() + ["--config", "{yaml}/hparams.yaml"], "hparams"),
    "yaml_out_of_range": (good() + ["--config", "{yaml}/range.yaml"], "--lr"),
    "yaml_binary": (good() + ["--config", "{yaml}/binary.yaml"], "YAML"),
    "yaml_is_folder": (good() + ["--config", "{yaml}"], "folder"),
    # conflicting options
    "resume_and_overwrite": (good() + ["--resume", "--overwrite"], "contradict"),
    "seed_and_seeds": (good() + ["--seed", "1", "--seeds", "2", "3"], "not both"),
    "cnn_method_on_vit": (good() + ["--method", "batchnorm", "--backbone", TINY_VIT], "supports cnn"),
    "vit_method_on_cnn": (good() + ["--method", "vpt_deep"], "supports vit"),
    "unet_method_for_classification": (good() + ["--method", "difffit"], "U-Net"),
    "classification_method_for_generation": (gen("--method", "ssf"), "U-Net methods"),
    "classification_dataset_for_generation": (gen("--dataset", "ham10000"), "unknown dataset 'ham10000'"),
    # offline Hub: fail at once, naming what works offline
    "hub_backbone_offline": (["--method", "lora", "--data-dir", "{shapes}"], "tf_efficientnet_lite0.offline_in1k"),
    "hub_base_model_offline": (gen(), "HF_HUB_OFFLINE"),
    "generation_data_dir_checked_first": (gen()[:7] + ["{missing}"] + gen()[8:], "does not exist"),
    "generation_without_base_model": (gen()[:-2], "no base model"),
    # subgroups, calibration and selection (issue 14)
    "group_columns_empty": (good() + ["--group-columns", ",,"], "name at least one metadata column"),
    "group_columns_unknown": (good() + ["--group-columns", "sex"], "metadata"),
    "group_columns_on_a_fixed_dataset": (good() + ["--dataset", "ham10000", "--group-columns", "sex"],
                                         "no such subgroups"),
    "age_bins_not_numbers": (good() + ["--age-bins", "young,old"], "--age-bins"),
    "age_bins_decreasing": (good() + ["--age-bins", "60,40"], "increasing"),
    "age_bins_without_ages": (good() + ["--dataset", "fitzpatrick17k", "--age-bins", "40,60"], "no such subgroups"),
    "bootstrap_negative": (good() + ["--bootstrap-resamples", "-1"], "--bootstrap-resamples"),
    "min_group_size_zero": (good() + ["--min-group-size", "0"], "--min-group-size"),
    "select_on_unknown": (good() + ["--select-on", "fairest"], "--select-on"),
    "worst_group_without_subgroups": (good() + ["--select-on", "worst_group"], "needs subgroups"),
}


PROGRESS = re.compile(r"\r|\d+%\|")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_command_line(name, inputs, tmp_path, monkeypatch, capsys):
    argv, expected = CASES[name]
    monkeypatch.chdir(tmp_path)  # a default runs/ folder would appear here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fill = {k: str(v) for k, v in inputs.items()}
    out = tmp_path / "out"
    argv = [a.format(**fill) for a in argv]
    if "--resume" not in argv or "--overwrite" in argv:
        argv += ["--output-dir", str(out)]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, err
    printed = [line for line in err.splitlines() if line.strip() and not PROGRESS.search(line)]
    assert printed[0].startswith("error:"), err  # progress bars (tqdm) may come first, nothing else
    assert expected.format(**fill) in err, err
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert not (tmp_path / "runs").exists()


def test_corpus_is_large():
    assert len(CASES) >= 40


def test_bare_command_prints_a_hint_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--data-dir" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_help_has_one_line_of_help_per_flag_with_real_defaults(capsys):
    parser = build_parser()
    for action in parser._actions:
        if action.option_strings:
            assert action.help and "\n" not in action.help, action.option_strings
    text = parser.format_help()
    assert "(default: None)" not in text
    method = next(a for a in parser._actions if "--method" in a.option_strings).help
    dataset = next(a for a in parser._actions if "--dataset" in a.option_strings).help
    backbone = next(a for a in parser._actions if "--backbone" in a.option_strings).help
    assert "lora" in method and "vpt_deep" in method and "default: lora" in method
    assert "ham10000" in dataset and "chestxray14" in dataset and "mimic_cxr" in dataset
    assert "ViT-B/16" in backbone and "ResNet50" in backbone
    assert main(["--help"]) == 0
    assert "--skip-bad-images" in capsys.readouterr().out


def test_every_numeric_option_has_a_range():
    numeric = [n for n, f in FIELDS.items() if str(f.type).split("|")[0].strip() in ("int", "float")]
    assert set(numeric) <= set(RANGES), sorted(set(numeric) - set(RANGES))


@pytest.mark.parametrize("values,message", [
    ({"img_size": -5}, "img_size (--img-size) must be an integer in [16, 4096], got -5"),
    ({"epochs": "ten"}, "epochs (--epochs) must be an integer, got 'ten'"),
    ({"pretrained": "yes"}, "pretrained (--pretrained) must be true or false"),
    ({"seeds": 3}, "seeds (--seeds) must be a list of integers"),
    ({"hparams": {"rank": 2.5}}, "lora hyper-parameter rank (--lora-rank) must be an integer"),
])
def test_validate_messages_read_well_without_the_cli(values, message):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**values).validate()
    assert message in str(e.value)


def test_yaml_numbers_written_as_strings_are_read_as_numbers():
    cfg = TrainConfig(lr="1e-3").validate()  # YAML 1.1 reads 1e-3 as a string
    assert cfg.lr == pytest.approx(1e-3)


def test_default_run_folder_names_method_dataset_and_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(["--method", "bitfit", "--dataset", "ham10000"])
    assert re.fullmatch(r"runs/bitfit-ham10000-\d{8}-\d{4}", cfg.output_dir)
    Path(cfg.output_dir).mkdir(parents=True)
    again = parse_config(["--method", "bitfit", "--dataset", "ham10000"]).output_dir
    assert again != cfg.output_dir and again.startswith("runs/bitfit-ham10000-")
    assert parse_config(["--output-dir", "x"]).output_dir == "x"


# ----------------------------------------------------------------------------- where a run writes (issue 23)
def _one_line_error(rc: int, err: str, expected: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.search(line)]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert expected in lines[0], err


def _deny_writes_in(monkeypatch, folder: Path, code: int) -> None:
    """Creating a file inside ``folder`` fails with ``code`` (as for a non-root user, or a read-only mount)."""
    import errno
    import os
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise OSError(code, os.strerror(code), str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    assert code in (errno.EACCES, errno.EROFS)


@pytest.mark.parametrize("case", ["output_under_a_file", "output_on_proc", "output_permission_denied",
                                  "output_read_only", "cache_on_proc", "cache_permission_denied"])
def test_places_a_run_writes_are_checked_before_it_writes(case, inputs, tmp_path, monkeypatch, capsys):
    import errno

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    parent = tmp_path / "parent"
    parent.mkdir()
    out, cache = parent / "run", tmp_path / "cache"
    expected = {"output_under_a_file": "is a file, not a folder", "output_on_proc": "--output-dir /proc/",
                "output_permission_denied": "permission denied", "output_read_only": "read-only file system",
                "cache_on_proc": "image cache", "cache_permission_denied": "image cache"}[case]
    if case == "output_under_a_file":
        out = inputs["file"] / "run"
    elif case == "output_on_proc":
        out = Path("/proc/medpeft-run")
    elif case in ("output_permission_denied", "output_read_only"):
        _deny_writes_in(monkeypatch, parent, errno.EACCES if "permission" in case else errno.EROFS)
    elif case == "cache_on_proc":
        cache = Path("/proc/medpeft-cache")
    else:
        cache.mkdir()
        _deny_writes_in(monkeypatch, cache, errno.EACCES)
    monkeypatch.setenv("MEDPEFT_CACHE_DIR", str(cache))
    rc = main(good(str(inputs["shapes"])) + ["--output-dir", str(out)])
    _one_line_error(rc, capsys.readouterr().err, expected)
    assert not list(parent.iterdir())  # nothing written: not the run folder, not the cache
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


def test_image_cache_lives_in_one_documented_place_never_beside_the_run(inputs, tmp_path, monkeypatch):
    from trainer.data.cache import image_cache_dir

    monkeypatch.setenv("MEDPEFT_CACHE_DIR", str(tmp_path / "c"))
    assert image_cache_dir() == tmp_path / "c" / "images" and image_cache_dir("x") == Path("x")
    monkeypatch.delenv("MEDPEFT_CACHE_DIR")
    monkeypatch.delenv("MEDPEFT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert image_cache_dir() == tmp_path / "xdg" / "medpeft" / "images"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert image_cache_dir() == Path.home() / ".cache" / "medpeft" / "images"


def _full_disk_open(real_open, target: str, written: dict):
    """``open`` whose files named ``target`` take half of a write, then fail with ENOSPC."""
    import errno
    import os

    def fake(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        if target in os.fspath(file) and ("w" in mode or "a" in mode):
            real_write = f.write

            def write(data):
                real_write(data[: len(data) // 2])
                written[os.fspath(file)] = True
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(file))

            f.write = write
        return f

    return fake


def test_disk_full_while_caching_images_is_one_line_and_leaves_no_cache_file(inputs, tmp_path, monkeypatch, capsys):
    import builtins

    import trainer.data.cache as cache_module

    monkeypatch.setenv("MEDPEFT_CACHE_DIR", str(tmp_path / "cache"))
    written: dict = {}
    monkeypatch.setattr(cache_module, "open", _full_disk_open(builtins.open, ".u8", written), raising=False)
    rc = main(good(str(inputs["shapes"])) + ["--output-dir", str(tmp_path / "out")])
    _one_line_error(rc, capsys.readouterr().err, "no space left on the device (ENOSPC)")
    assert written  # the fault did happen mid-write
    assert not [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing half-written kept
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_disk_full_while_writing_results_or_the_adapter_keeps_the_run_resumable(inputs, tmp_path, monkeypatch,
                                                                                   capsys):
    import builtins
    import errno

    import adapters.core as adapters_core
    import trainer.run_dir as run_dir_module
    from safetensors import SafetensorError

    written: dict = {}
    out = tmp_path / "out"
    monkeypatch.setattr(run_dir_module, "open", _full_disk_open(builtins.open, "results.json", written), raising=False)
    rc = main(good(str(inputs["shapes"])) + ["--output-dir", str(out)])
    _one_line_error(rc, capsys.readouterr().err, "no space left")
    assert written and not (out / "results.json").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not (out / ".in_use").exists()  # released: the folder is resumable, not "in use"
    monkeypatch.undo()

    def full_disk_save(tensors, path, metadata=None):  # safetensors' own (Rust) error for a full disk
        Path(path).write_bytes(b"\0" * 10)
        raise SafetensorError(f"Error while serializing: IoError(Os {{ code: {errno.ENOSPC}, kind: StorageFull, "
                              f"message: \"No space left on device\" }})")

    monkeypatch.setattr(adapters_core, "save_file", full_disk_save)  # adapters.core writes every safetensors file
    rc = main(good(str(inputs["shapes"])) + ["--output-dir", str(tmp_path / "out2")])
    _one_line_error(rc, capsys.readouterr().err, "no space left on the device (ENOSPC)")
    assert not list((tmp_path / "out2").rglob("adapter_model.safetensors"))
    assert not list((tmp_path / "out2").rglob("best.safetensors"))
    assert not (tmp_path / "out2" / "results.json").exists()


def test_a_folder_in_use_by_a_live_process_says_so_and_names_it(inputs, tmp_path, monkeypatch, capsys):
    import json
    import os
    import platform
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("method: bitfit\n")
    lock = {"pid": os.getppid(), "ppid": 1, "host": platform.node(), "started": time.time()}
    (out / ".in_use").write_text(json.dumps(lock))
    rc = main(good(str(inputs["shapes"])) + ["--output-dir", str(out), "--resume"])
    err = capsys.readouterr().err
    _one_line_error(rc, err, f"in use by a running process (pid {os.getppid()} on host")
    assert "interrupted" not in err
    lock["pid"] = 2**22 + 12345  # no such process: a killed run, resumable (the message says interrupted)
    (out / ".in_use").write_text(json.dumps(lock))
    rc = main(good(str(inputs["shapes"])) + ["--output-dir", str(out)])
    _one_line_error(rc, capsys.readouterr().err, "interrupted run")


@pytest.mark.parametrize("argv,expected", [
    (["--trials", "0"], "--trials must be an integer of at least 1, got 0"),
    (["--trials", "-2"], "--trials"),
    (["--trials", "many"], "--trials"),
    (["--reduction-factor", "1"], "--reduction-factor"),
    (["--min-resource", "0"], "--min-resource"),
    (["--sampler-seed", "-1"], "--sampler-seed"),
    (["--epochs", "0"], "--epochs"),
])
def test_hpo_numeric_options_are_checked_and_nothing_is_written(argv, expected, inputs, tmp_path, capsys):
    from trainer.study.hpo import main as hpo_main

    out = tmp_path / "study"
    rc = hpo_main(good(str(inputs["shapes"])) + ["--output-dir", str(out)] + argv)
    _one_line_error(rc, capsys.readouterr().err, expected)
    assert not out.exists()


@pytest.mark.parametrize("argv,expected", [
    (["--heartbeat", "0"], "--heartbeat"), (["--stale-after", "5"], "--stale-after"), (["--poll", "nan"], "--poll"),
    (["--poll", "-1"], "--poll"), (["--max-trials", "0"], "--max-trials"), (["--heartbeat", "x"], "--heartbeat"),
])
def test_benchmark_numeric_options_are_checked_and_nothing_is_written(argv, expected, tmp_path, capsys):
    from trainer.study.benchmark import main as bench_main

    grid = tmp_path / "g.yaml"
    grid.write_text("grid: {method: [bitfit]}\n")
    rc = bench_main(["run", str(grid), "--results-dir", str(tmp_path / "results")] + argv)
    _one_line_error(rc, capsys.readouterr().err, expected)
    assert not (tmp_path / "results").exists()
    grid.write_text("grid: {method: [bitfit]}\nhpo: {trials: -1}\n")
    rc = bench_main(["run", str(grid), "--results-dir", str(tmp_path / "results")])
    _one_line_error(rc, capsys.readouterr().err, "hpo trials")
