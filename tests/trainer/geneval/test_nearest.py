"""The app's nearest-training-image view: found through the run folder of a generation adapter, judged
against the run's calibrated threshold; "not available" when the training set is not on this machine."""
from __future__ import annotations

import json
import types

from PIL import Image

from .conftest import near_copy, save


def _run(tmp_path, faces, threshold=0.3):
    from trainer.data.text2img import Pair
    from trainer.geneval.nearest import write_train_pairs

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    paths = save(faces[:30], tmp_path / "train_images")
    write_train_pairs(run, [Pair(str(p), f"report {i}") for i, p in enumerate(paths)])
    (run / "geneval").mkdir()
    (run / "geneval" / "test.json").write_text(json.dumps(
        {"sets": {"generated": {"memorization": {"thresholds": {"pixel": threshold}}}}}))
    return run, paths


def test_nearest_training_image(tmp_path, faces):
    from trainer.geneval.nearest import nearest_training
    from ui.views import nearest_training_markdown

    run, paths = _run(tmp_path, faces)
    copy = save([near_copy(faces[7], "combined")], tmp_path / "gen", "copy")[0]
    hit = nearest_training(Image.open(copy), run / "adapter")
    assert hit["available"] and hit["path"] == str(paths[7]) and hit["flagged"] is True
    assert hit["distance"] < 0.1 and hit["relative"] < 0.3 and hit["n_train"] == 30
    assert "Flagged as a near-copy" in nearest_training_markdown(hit) and "img_007.png" in nearest_training_markdown(hit)
    novel = nearest_training(str(save([faces[80]], tmp_path / "gen", "novel")[0]), run / "adapter")
    assert novel["available"] and novel["flagged"] is False and "Not a near-copy" in nearest_training_markdown(novel)
    # not available: no adapter, no training list, training images not on this machine
    assert not nearest_training(copy, None)["available"]
    other = tmp_path / "elsewhere" / "adapter"
    other.mkdir(parents=True)
    gone = nearest_training(copy, other)
    assert not gone["available"] and "not available locally" in gone["reason"]
    assert nearest_training_markdown(gone).startswith("Nearest training image: not available.")
    for p in paths:
        p.unlink()
    (run / "train_pairs.csv").touch()  # a new listing (mtime): the cached index is not reused
    assert "not available locally" in nearest_training(copy, run / "adapter")["reason"]


def test_generate_tab_nearest(tmp_path, faces):
    from ui.tabs.generate import GenerateTab

    run, paths = _run(tmp_path, faces)
    saved = []
    tab = GenerateTab.__new__(GenerateTab)
    tab.state = types.SimpleNamespace(get=lambda key, kind: types.SimpleNamespace(folder=run / "adapter"))
    tab.files = types.SimpleNamespace(save=lambda img, stem: saved.append((img.size, stem)) or str(tmp_path / "x.png"))
    copy = save([near_copy(faces[3], "shift")], tmp_path / "gen", "copy")[0]
    shown, text = tab.nearest(str(copy), "generation/run/adapter")
    assert shown == str(tmp_path / "x.png") and saved == [((64, 64), "nearest_training")] and "img_003.png" in text
    shown, text = tab.nearest(str(copy), "")
    assert shown is None and "not available" in text
