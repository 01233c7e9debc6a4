"""MED-PEFT's protocol in the trainer: layer-wise lr decay, uncertain labels out of the loss, and a
run on an NIH-layout dataset with split lists and an MAE-format foundation checkpoint that trains on
exactly the listed images and reports per-class and mean AUROC."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from adapters import apply_method, create_backbone
from adapters.backbones import TINY_VIT
from tests.helpers.checkpoints import encoder_state, mae_checkpoint
from trainer.__main__ import main as trainer_main
from trainer.data.datasets.chestxray14 import CLASSES
from trainer.loops.optim import build_optimizer, layer_ids


@pytest.mark.parametrize("method", ["full", "lora"])
def test_layer_decay_gives_the_expected_lr_per_parameter(method):
    model = apply_method(create_backbone(TINY_VIT, 3, pretrained=False), method)
    depth = len(model.base_model.model.blocks) if method == "lora" else len(model.blocks)
    opt = build_optimizer(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if ".blocks." in f".{name}":
            i = int(name.split("blocks.")[1].split(".")[0])
            expected = 0.5 ** (depth - i)
        elif any(k in name for k in ("cls_token", "pos_embed", "patch_embed")):
            expected = 0.5 ** (depth + 1)  # the embeddings lowest
        else:
            expected = 1.0  # final norm and head at the base lr
        assert lr_of[id(p)] == pytest.approx(expected), name
    ids, n = layer_ids(model)
    assert n == depth + 2 and min(ids.values()) == 0
    no_decay = build_optimizer(model, lr=1.0, weight_decay=0.05)  # without: one lr
    assert {g["lr"] for g in no_decay.param_groups} == {1.0}


def test_uncertain_labels_are_left_out_of_the_loss():
    from trainer.loops.metrics import masked_bce as _masked_bce

    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    target = torch.tensor([[1.0, -1.0], [0.0, 1.0]])
    keep = target >= 0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], target[keep])
    assert torch.allclose(_masked_bce(logits, target), expected)


def _nih(root, n=40):
    rng = np.random.default_rng(0)
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
    for i in range(n):
        name = f"{i:08d}_000.png"
        found = [c for j, c in enumerate(CLASSES[:3]) if (i >> j) & 1] or ["No Finding"]
        lines.append(f"{name},{'|'.join(found)},0,{i},{40 + i},{'MF'[i % 2]},PA")
        img = (rng.random((24, 24)) * 80).astype(np.uint8)
        img[4:12, 4:12] += 100 * ((i & 1) > 0)
        out = root / "images_001" / "images" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(out)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    return root


def _lists(folder, nih):
    import pandas as pd

    df = pd.read_csv(nih / "Data_Entry_2017.csv")
    def line(i):
        found = df["Finding Labels"][i].split("|")
        return f"{df['Image Index'][i]} " + " ".join("1" if c in found else "0" for c in CLASSES)
    folder.mkdir()
    (folder / "train_1.txt").write_text("\n".join(line(i) for i in range(0, 8)) + "\n")
    (folder / "train_10.txt").write_text("\n".join(line(i) for i in range(0, 16)) + "\n")
    (folder / "train_list.txt").write_text("\n".join(line(i) for i in range(0, 24)) + "\n")
    (folder / "val_list.txt").write_text("\n".join(line(i) for i in range(24, 32)) + "\n")
    (folder / "test_list.txt").write_text("\n".join(line(i) for i in range(32, 40)) + "\n")
    return folder


@pytest.mark.slow
def test_medpeft_command_trains_on_exactly_the_listed_images(tmp_path):
    nih = _nih(tmp_path / "NIH")
    lists = _lists(tmp_path / "splits", nih)
    mae_checkpoint(tmp_path / "MRM.pth", encoder_state(img_size=32))
    out = tmp_path / "run"
    rc = trainer_main(["--method", "lora", "--dataset", "chestxray14", "--data-dir", str(nih),
                       "--split-lists", str(lists), "--label-fraction", "1", "--backbone", TINY_VIT,
                       "--init-checkpoint", str(tmp_path / "MRM.pth"), "--layer-decay", "0.65",
                       "--normalization", "mrm", "--lora-targets", "qv", "--lora-alpha", "32", "--lora-dropout", "0.1",
                       "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
                       "--output-dir", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["split_sizes"] == {"train": 8, "val": 8, "test": 8}  # train_1.txt exactly
    split = json.loads((out / "seed_0" / "splits.json").read_text())
    assert sorted(p.rsplit("/", 1)[-1] for p in split["splits"]["train"]) == [f"{i:08d}_000.png" for i in range(8)]
    test = results["metrics"]["test"]
    per_class = results["per_seed"][0]["test"]["auroc_per_class"]
    assert set(per_class) == set(CLASSES) and per_class["Hernia"] is None  # no positives: undefined, not 0
    defined = [v for v in per_class.values() if v is not None]
    assert test["auroc"]["mean"] == pytest.approx(np.mean(defined))
    report = results["per_seed"][0]["init_report"]
    assert report["loaded"] > 0 and any("decoder" in k for k in report["dropped"])
    cfg = json.loads((out / "seed_0" / "adapter" / "medpeft.json").read_text())
    assert cfg["init_checkpoint"].endswith("MRM.pth") and cfg["global_pool"] == "avg" and cfg["fc_norm"] is True
    assert cfg["data_config"]["mean"] == [0.4978] * 3
