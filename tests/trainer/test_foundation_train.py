"""The trainer on a foundation preset from a local copy of its repo: --backbone NAME --init-checkpoint DIR.
The adapter records the preset and the repo's normalisation; load_adapter and the Predictor rebuild and
preprocess with them; the model card names the base's licence and its Hub id as base_model."""
from __future__ import annotations

import json

import pytest

from adapters.io import load_adapter
from tests.helpers import foundation_repos as R
from tests.helpers import write_shapes
from trainer.__main__ import main as trainer_main


@pytest.mark.slow
def test_trainer_lora_on_a_local_rad_dino_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPEFT_CACHE", str(tmp_path / "cache"))
    repo, _ = R.dinov2_repo(tmp_path / "rad-dino", swiglu=True)
    data = write_shapes(tmp_path / "shapes")
    out = tmp_path / "run"
    rc = trainer_main(["--method", "lora", "--dataset", "imagefolder", "--data-dir", str(data),
                       "--backbone", "rad-dino", "--init-checkpoint", str(repo), "--epochs", "1",
                       "--batch-size", "8", "--num-workers", "0", "--output-dir", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    folder = out / results["adapter_dir"]
    cfg = json.loads((folder / "medpeft.json").read_text())
    assert cfg["backbone"] == "rad-dino" and cfg["init_checkpoint"] == str(repo)
    assert cfg["data_config"]["mean"] == pytest.approx([0.5307] * 3)  # the repo's preprocessor_config.json
    assert cfg["data_config"]["input_size"] == [3, 28, 28]
    model, acfg = load_adapter(folder)
    assert acfg.metrics["test_f1_macro"] == pytest.approx(results["metrics"]["test"]["f1_macro"]["mean"])
    card = (folder / "README.md").read_text()
    assert "base_model: microsoft/rad-dino" in card and "msrla" in card and "non-commercial" in card
    from trainer.card import build_model_card

    hub_card = build_model_card(acfg, results)  # the card pushed to the Hub
    assert "base_model: microsoft/rad-dino" in hub_card and "**msrla**" in hub_card
    assert "non-commercial" in hub_card and "gated" not in hub_card.split("## Use")[0].lower().replace("aggregated", "")

    # the Predictor preprocesses with the recorded normalisation: same probabilities as load_adapter + transforms_for
    import torch
    from PIL import Image

    from trainer.data.transforms import transforms_for
    from trainer.infer.predictor import Predictor

    image = Image.open(next(p for p in sorted((data / "left").iterdir()) if p.is_file())).convert("RGB")
    probs = Predictor().predict(folder, image).probs
    with torch.no_grad():
        ref = torch.softmax(model(transforms_for(acfg)(image).unsqueeze(0))[0], 0)
    assert [probs[c] for c in acfg.class_names] == pytest.approx(ref.tolist(), abs=1e-5)


def test_train_tab_offers_presets_where_the_hub_is_reachable():
    from trainer.config import ConfigError
    from trainer.jobs import options

    offline = [v for _, v in options.backbone_choices(reachable=False)]
    online = [v for _, v in options.backbone_choices(reachable=True)]
    assert "rad-dino" not in offline and {"rad-dino", "medsiglip", "biomedclip", "uni"} <= set(online)
    assert "mrm" not in online  # no Hub repo: a file for --init-checkpoint
    label = dict((v, k) for k, v in options.backbone_choices(reachable=True))["uni"]
    assert "cc-by-nc-nd-4.0" in label and "gated" in label
    cfg = options.form_config(backbone="rad-dino", method="lora", epochs=1, batch_size=4, lr=1e-3, img_size=224)
    assert cfg.backbone == "rad-dino"
    with pytest.raises(ConfigError, match="foundation preset"):
        options.form_config(backbone="no-such-model", method="lora", epochs=1, batch_size=4, lr=1e-3, img_size=224)


def test_trainer_help_names_the_presets(capsys):
    try:
        trainer_main(["--help"])
    except SystemExit:
        pass
    out = " ".join(capsys.readouterr().out.split())  # help text wraps lines
    for name in ("rad-dino", "biomedclip", "medsiglip", "uni2-h", "virchow2", "retfound-cfp"):
        assert name in out
