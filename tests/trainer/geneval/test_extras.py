"""Diversity (MS-SSIM), prompts files, extractors from files (TorchScript, safetensors + timm
architecture), and the Kendall tau between the method rankings of two extractors."""
from __future__ import annotations

import json

import pytest
import torch

from .conftest import photo_tiles, save, to_uint8


def test_intra_prompt_and_set_level_diversity(faces):
    from trainer.geneval.diversity import diversity

    thumbs = torch.nn.functional.interpolate(faces[:8, None], size=192, mode="bilinear")[:, 0]
    thumbs = (thumbs * 255).round().to(torch.uint8)
    collapsed = torch.stack([thumbs[0]] * 3 + list(thumbs[3:6]))  # prompt a: one image thrice; prompt b: three
    d = diversity(collapsed, ["a", "a", "a", "b", "b", "b"])
    assert d["kind"] == "intra_prompt" and d["n_prompts"] == 2
    from trainer.geneval.diversity import intra_prompt

    only_a, _ = intra_prompt(collapsed[:3], ["a"] * 3)
    only_b, _ = intra_prompt(collapsed[3:], ["b"] * 3)
    assert only_a == pytest.approx(1.0, abs=1e-4) and only_b < 0.9
    assert d["ms_ssim"] == pytest.approx((only_a + only_b) / 2, abs=1e-5)
    unique = diversity(thumbs, [str(i) for i in range(8)], real_thumbs=thumbs)
    assert unique["kind"] == "set" and unique["ms_ssim"] < 0.9 and unique["real_set_ms_ssim"] == unique["ms_ssim"]


def test_prompts_files(tmp_path):
    from trainer.geneval.images import ImageSetError
    from trainer.geneval.report import read_prompts

    (tmp_path / "p.csv").write_text('image,prompt\nb.png,"Clear lungs."\na.png,"Small effusion."\n')
    assert read_prompts(tmp_path / "p.csv", ["a.png", "b.png"]) == ["Small effusion.", "Clear lungs."]
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    assert read_prompts(tmp_path / "p.txt", ["a.png", "b.png"]) == ["one", "two"]
    with pytest.raises(ImageSetError, match="2 prompts for 3"):
        read_prompts(tmp_path / "p.txt", ["a", "b", "c"])
    with pytest.raises(ImageSetError, match="no prompt"):
        read_prompts(tmp_path / "p.csv", ["a.png", "c.png"])


def _safetensors_extractor(folder):
    from safetensors.torch import save_file

    from adapters import create_backbone

    model = create_backbone("medpeft_tiny_resnet", 0, pretrained=False)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "medpeft_tiny_resnet"}))
    return folder / "model.safetensors"


def test_file_extractors_are_named_and_hashed(tmp_path):
    from trainer.geneval.extractors import ExtractorError, file_sha256, resolve

    path = _safetensors_extractor(tmp_path / "tiny")
    ex = resolve(str(path))
    assert ex.describe()["sha256"] == file_sha256(path) and ex.name == "medpeft_tiny_resnet@model"
    feats = ex(torch.stack([ex.prepare(x) for x in to_uint8(torch.rand(3, 40, 50))]))
    assert feats.ndim == 2 and feats.shape[0] == 3 and torch.isfinite(feats).all()
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(path.read_bytes())
    with pytest.raises(ExtractorError, match="which timm architecture"):
        resolve(str(bare))
    assert resolve(f"medpeft_tiny_resnet={path}").sha256 == file_sha256(path)
    with pytest.raises(ExtractorError, match="do not fit"):
        resolve(f"medpeft_tiny_vit={path}")


@pytest.mark.slow
def test_two_extractors_give_a_kendall_tau(faces, lite0, tmp_path):
    from trainer.geneval.report import evaluate, format_report

    from .test_memorization import _torchscript_extractor

    ts = str(_torchscript_extractor(tmp_path / "tiny.pt"))
    real = to_uint8(faces[:20])
    fakes = {"faces": to_uint8(faces[50:70]), "noisy": to_uint8((faces[50:70] + 0.3 * torch.rand(20, 64, 64)).clamp(0, 1)),
             "photos": to_uint8(photo_tiles(20))}
    report = evaluate(real, fakes, extractors=[lite0, ts], n_boot=0, progress=False)
    taus = report["ranking_agreement"]["kendall_tau"]
    assert list(taus) == ["lite0-128 vs tiny"] and -1 <= taus["lite0-128 vs tiny"]["tau"] <= 1
    fid = {m: s["fidelity"]["lite0-128"]["fid"] for m, s in report["sets"].items()}
    assert fid["faces"] < fid["photos"]
    text = format_report(report)
    assert "Kendall tau" in text and "lite0-128" in text and "tiny" in text
