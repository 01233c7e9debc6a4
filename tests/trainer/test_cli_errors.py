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
