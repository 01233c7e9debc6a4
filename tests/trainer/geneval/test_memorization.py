"""Memorization: near-copies of training images (shifted, cropped, noised, brightened, resized, all at
once) planted among unseen real images are flagged at the threshold calibrated on held-out images, with
their nearest training image; unseen images mostly are not."""
from __future__ import annotations

import json

import pytest
import torch

from .conftest import KINDS, features, near_copy, save


def _planted(faces, n_copies: int = 24):
    train, heldout, unseen = faces[:50], faces[50:75], faces[75:100]
    copies = [near_copy(train[2 * i], KINDS[i % len(KINDS)], seed=i) for i in range(n_copies)]  # sizes differ
    sources = [2 * i for i in range(n_copies)]
    return train, heldout, unseen, copies, sources


def _sets(extractors, **named):
    from trainer.geneval.images import load_set

    def uint8(images):
        return [(x * 255).round().clamp(0, 255).to(torch.uint8)[None].expand(3, -1, -1).contiguous() for x in images]

    return {k: load_set(uint8(v), extractors, role=k, thumbs=True, progress=False) for k, v in named.items()}


@pytest.mark.parametrize("use_features", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_planted_near_copies_are_flagged(faces, lite0, use_features):
    from trainer.geneval.memorization import memorization

    train, heldout, unseen, copies, sources = _planted(faces)
    fake = list(unseen) + copies
    sets = _sets([lite0], train=train, heldout=heldout, fake=fake)
    mem = memorization(sets["train"], sets["heldout"], sets["fake"], feature="lite0-128" if use_features else None,
                       fpr=0.01)
    flagged = torch.tensor([r["flagged"] for r in mem["per_image"]])
    recall = flagged[len(unseen):].double().mean().item()
    false_positive = flagged[:len(unseen)].double().mean().item()
    assert recall >= 0.9, [r["score"] for r in mem["per_image"][len(unseen):]]
    assert false_positive <= 0.08  # 2 of 25 at most, at a stated rate of 1/26 resolvable
    assert mem["fpr_target"] == 0.01 and mem["n_heldout"] == 25 and mem["heldout_flag_rate"] <= 0.04
    assert 0 <= mem["fpr_leave_one_out"] <= 0.12
    assert mem["channels"] == (["pixel", "feature"] if use_features else ["pixel"])
    # each flagged copy names the training image it was made from
    rows = mem["per_image"][len(unseen):]
    right = [r["nearest"] == sets["train"].names[src] for r, src in zip(rows, sources) if r["flagged"]]
    assert sum(right) >= 0.9 * len(right)
    assert mem["n_flagged"] == len(mem["flagged"]) == int(flagged.sum())


def test_exact_duplicates_in_the_heldout_set_are_left_out(faces):
    from trainer.geneval.memorization import memorization

    sets = _sets([], train=faces[:30], heldout=list(faces[30:50]) + list(faces[:3]), fake=faces[60:70])
    mem = memorization(sets["train"], sets["heldout"], sets["fake"])
    assert mem["n_heldout"] == 20 and any("exact copies" in n for n in mem["notes"])
    same = _sets([], train=faces[:10], heldout=faces[:10], fake=faces[20:25])
    with pytest.raises(ValueError, match="held-out real images"):
        memorization(same["train"], same["heldout"], same["fake"])


def test_threshold_extrapolates_a_small_heldout_set():
    from trainer.geneval.memorization import tail_quantile, threshold

    g = torch.Generator().manual_seed(0)
    small = torch.randn(25, generator=g)
    assert threshold(small, 0.01) <= small.min()  # 25 scores cannot show a 1 % quantile: extrapolated
    big = torch.randn(20000, generator=g)
    assert abs(threshold(big, 0.05) - (-1.645)) < 0.1  # enough scores: the empirical quantile
    assert tail_quantile(big, 0.01) == pytest.approx(-2.33, abs=0.25)


def _torchscript_extractor(path):
    """A small fixed random conv net saved as TorchScript: the file-extractor path."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 5, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, stride=2),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    scripted = torch.jit.script(net.eval())
    scripted.input_size = 64  # noqa: attribute read by the extractor (falls back to 224)
    torch.jit.save(scripted, str(path))
    return path


@pytest.mark.slow
def test_command_line_report(faces, tmp_path, capsys):
    from trainer.geneval.cli import main
    from trainer.geneval.extractors import file_sha256

    train, heldout, unseen, copies, _ = _planted(faces, n_copies=6)
    save(train, tmp_path / "train", "train")
    save(heldout, tmp_path / "real", "real")
    save(list(unseen[:10]) + copies, tmp_path / "fake", "gen")
    ts = _torchscript_extractor(tmp_path / "tiny.pt")
    out = tmp_path / "out" / "report.json"
    rc = main(["--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"), "--train", str(tmp_path / "train"),
               "--extractor", str(ts), "--json", str(out), "--bootstrap", "10", "--no-progress", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "FID" in captured.out and "KID" in captured.out and "memorization" in captured.out
    assert "below 2,048" in captured.err
    report = json.loads(out.read_text())
    assert report["extractors"][0] == {"name": "tiny", "sha256": file_sha256(ts), "source": f"TorchScript {ts}"}
    entry = report["sets"]["fake"]
    assert entry["fidelity"]["tiny"]["fid_ci95"] is not None and "precision" in entry["prdc"]["tiny"]
    flagged = {r["image"] for r in entry["memorization"]["flagged"]}
    assert {f"gen_{i:03d}.png" for i in range(10, 16)} <= flagged
    assert len(flagged - {f"gen_{i:03d}.png" for i in range(10, 16)}) <= 1
    sheet = entry["memorization"]["contact_sheet"]
    from PIL import Image

    assert Image.open(sheet).size[0] > 300


def test_command_line_errors(tmp_path, capsys, faces, monkeypatch):
    import huggingface_hub.constants

    from trainer.geneval.cli import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no DNS retries in the test

    save(faces[:6], tmp_path / "real")
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad"
    save(faces[:3], bad)
    (bad / "broken.png").write_bytes(b"not a png at all")
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, pickled)
    cases = [(["--fake", str(tmp_path / "missing")], "does not exist"),
             (["--fake", str(tmp_path / "empty")], "holds no images"),
             (["--fake", str(bad), "--extractor", str(_torchscript_extractor(tmp_path / "t.pt"))], "unreadable"),
             (["--fake", str(tmp_path / "real"), "--extractor", str(pickled)], "not a TorchScript"),
             (["--fake", str(tmp_path / "real"), "--extractor", "timm:vit_base_patch16_224.augreg_in21k"],
              "not available offline"),
             (["--fake", str(tmp_path / "real"), "--extractor", str(tmp_path / "nope.safetensors")], "not found")]
    for args, message in cases:
        rc = main(["--real", str(tmp_path / "real"), "--no-progress", "--device", "cpu"] + args)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and len(err.splitlines()) == 1, (args, err)
    assert main(["--fake", str(tmp_path / "real")]) == 2  # a usage error: one line too
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: the following arguments are required: --real (see python -m trainer.geneval --help)"]
