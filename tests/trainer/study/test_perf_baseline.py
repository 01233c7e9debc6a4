"""``python -m trainer.perf --vs-baseline`` and issue 16's targets: the synthetic folder, the
gradient-checkpointing rows, the targets' PASS/FAIL logic, and (slow) the whole comparison end to end
against benchmarks/baseline_timm_peft.py. Mechanics only: no timing is asserted."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters import unwrap
from adapters.backbones import TINY_VIT
from trainer.study.perf.baseline import compare, synthetic_image_folder
from trainer.study.perf.bench import Bench, build, split_variant
from trainer.study.perf.report import build_targets, format_targets

ROOT = Path(__file__).resolve().parents[3]


def _bench(**kw) -> Bench:
    base = dict(backbone=TINY_VIT, img_size=None, batch_size=4, num_classes=3, device="cpu", dtype="fp32",
                pretrained=False, steps=1, warmup=0)
    base.update(kw)
    return Bench(**base)


def test_synthetic_folder_is_an_image_folder_of_decodable_jpegs(tmp_path):
    from torchvision.datasets import ImageFolder

    folder = synthetic_image_folder(tmp_path / "imgs", images=7, classes=3, size=(60, 45))
    ds = ImageFolder(str(folder))
    assert len(ds) == 7 and ds.classes == ["class_0", "class_1", "class_2"]
    img, label = ds[0]
    assert img.size == (60, 45) and label == 0
    assert len({ds[i][0].tobytes() for i in range(3)}) == 3  # not one image copied


def test_gc_variant_builds_the_method_with_checkpointing():
    assert split_variant("lora+gc") == ("lora", True) and split_variant("ssf") == ("ssf", False)
    model = build(_bench(), "lora+gc")
    assert unwrap(model).grad_checkpointing is True and unwrap(model) is not model
    assert unwrap(build(_bench(), "lora")).grad_checkpointing is False


def _row(method, memory_ratio, time_ratio=0.5, merged=1.0, mergeable=True):
    return {"method": method, "mergeable": mergeable, "images_per_s": 10.0,
            "ratios": {"peak_memory_vs_full": memory_ratio, "train_time_vs_full": time_ratio,
                       "merged_vs_base": merged, "infer_vs_base": merged}}


def test_memory_targets_pass_fail_and_say_where_they_were_measured():
    rows = [_row("full", 1.0), _row("lora", 0.5), _row("lora+gc", 0.3), _row("ssf", 1.02, merged=1.2)]
    targets = {t["name"]: t for t in build_targets(_bench(), "vit", 224, rows, None)}
    gc = targets["LoRA + gradient checkpointing peak memory vs full"]
    assert gc["target"] == 0.35 and gc["pass"] is True and TINY_VIT in gc["note"] and "batch 64" in gc["note"]
    ssf = targets["SSF peak memory vs full"]
    assert ssf["target"] == 1.0 and ssf["pass"] is False
    assert targets["ssf merged inference vs base"]["pass"] is False
    assert "lora+gc merged inference vs base" not in targets  # merges as lora does: not listed twice
    at_spec = build_targets(_bench(backbone="vit_base_patch16_224", batch_size=64), "vit", 224, rows, None)
    assert next(t for t in at_spec if t["name"].startswith("SSF"))["note"] == ""
    text = format_targets(list(targets.values()))
    assert "[PASS] LoRA + gradient checkpointing" in text and "[FAIL] SSF peak memory" in text


def test_baseline_comparison_target_is_device_specific():
    trainer = {"images_per_s": 30.0, "peak_mem_bytes": 100, "runtime": {"precision": "bf16"}}
    baseline = {"images_per_s": 20.0, "peak_mem_bytes": 200}
    cpu = compare(trainer, baseline, cuda=False)
    assert math.isclose(cpu["epoch_time_ratio"], 2 / 3) and cpu["peak_memory_ratio"] == 0.5
    assert cpu["targets"][0]["target"] == 0.9 and cpu["targets"][0]["pass"] is True
    gpu = compare(trainer, baseline, cuda=True)
    assert gpu["targets"][0]["target"] == 0.5 and gpu["targets"][0]["pass"] is False
    assert "bf16" in gpu["targets"][0]["note"]
    broken = compare({"error": "boom"}, baseline, cuda=False)
    assert broken["epoch_time_ratio"] is None and broken["targets"][0]["pass"] is None


@pytest.mark.slow
def test_vs_baseline_end_to_end(tmp_path):
    out = tmp_path / "perf.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "trainer.perf", "--backbone", TINY_VIT, "--batch-size", "4", "--methods",
           "lora,lora+gc,ssf", "--steps", "1", "--warmup", "0", "--vs-baseline", "--baseline-images", "12",
           "--baseline-epochs", "2", "--workers", "0", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [r["method"] for r in data["methods"]] == ["full", "lora", "lora+gc", "ssf"]
    vs = data["vs_baseline"]
    for side in ("trainer", "baseline"):
        assert "error" not in vs[side], vs[side]
        assert vs[side]["images_per_s"] > 0 and vs[side]["images_per_epoch"] == 12 and vs[side]["timed_epochs"] == 1
    assert vs["trainer"]["runtime"]["precision"] == "no" and vs["baseline"]["precision"] == "fp32"
    assert vs["trainer"]["trainable_params"] < vs["trainer"]["total_params"]
    assert vs["epoch_time_ratio"] > 0
    names = [t["name"] for t in data["targets"]]
    for name in ("trainer epoch time vs hand-written timm+peft loop", "SSF peak memory vs full",
                 "LoRA + gradient checkpointing peak memory vs full", "LoRA train step time vs full"):
        assert name in names
    text = proc.stdout
    assert "vs hand-written timm+peft loop" in text and "images/s" in text and "epoch time trainer/baseline" in text
    assert "[PASS] trainer epoch time" in text or "[FAIL] trainer epoch time" in text
