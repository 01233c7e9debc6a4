"""Exact resume: a run interrupted after epoch 2 and resumed gives the history of the uninterrupted
run (every random state restored: Python, NumPy, torch, the loader's shuffle and workers)."""
from __future__ import annotations

import pytest

from adapters.backbones import TINY_CNN
from tests.helpers import write_shapes
from trainer.config import TrainConfig
from trainer.loops.classify import run


class Interrupt(Exception):
    pass


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(method="bitfit", dataset="imagefolder", data_dir=str(data), backbone=TINY_CNN, pretrained=False,
                epochs=3, patience=10, batch_size=8, lr=1e-2, img_size=32, output_dir=str(out),
                cache_dir=str(out.parent / "cache"))
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_history_equals_the_uninterrupted_one(tmp_path, workers):
    data = write_shapes(tmp_path / "shapes", per_class=10)
    straight = run(_cfg(data, tmp_path / "straight", num_workers=workers))

    def stop_after_epoch_2(event):
        if event["kind"] == "epoch" and event["epoch"] == 2:
            raise Interrupt

    out = tmp_path / "interrupted"
    with pytest.raises(Interrupt):
        run(_cfg(data, out, num_workers=workers), progress=stop_after_epoch_2)
    resumed = run(_cfg(data, out, num_workers=workers, resume=True))
    a, b = straight["per_seed"][0], resumed["per_seed"][0]
    assert a["best_epoch"] == b["best_epoch"]
    for key in ("val", "test"):
        for metric in ("f1_macro", "accuracy"):
            assert b[key][metric] == pytest.approx(a[key][metric], abs=1e-6), (key, metric)
    import json

    ha = json.loads((tmp_path / "straight" / "seed_0" / "history.json").read_text())
    hb = json.loads((out / "seed_0" / "history.json").read_text())
    assert [h["epoch"] for h in hb] == [1, 2, 3]
    for x, y in zip(ha, hb):
        assert y["train_loss"] == pytest.approx(x["train_loss"], abs=1e-6)
        assert y["f1_macro"] == pytest.approx(x["f1_macro"], abs=1e-6)
