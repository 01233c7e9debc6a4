"""The generation loop judged by trainer.geneval: a validation split of report-image pairs, the
noise-norm memorization score (Wen et al.) on the tiny Stable Diffusion pipeline, the Table 4 additions,
and the multi-objective (NSGA-II) search end to end writing its Pareto front."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.trainer.loops.test_generation import (_one_thread, _tokenizer_cache, reports,  # noqa: F401 (fixtures)
                                                 tiny_dir)


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory, reports):  # noqa: F811
    root = tmp_path_factory.mktemp("pairs")
    texts = [r["impression"] for r in reports if r["impression"] and 20 < len(r["impression"]) < 200][:12]
    lines = ["path,text"]
    for i, text in enumerate(texts):
        (root / "img").mkdir(exist_ok=True)
        arr = (np.random.RandomState(i).rand(6, 6) * 255).astype(np.uint8)
        Image.fromarray(arr).resize((40, 40), Image.BILINEAR).save(root / "img" / f"{i}.png")
        lines.append(f'img/{i}.png,"{text}"')
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return root


def test_validation_split_of_pairs(pairs_csv, tmp_path):
    from trainer.data.text2img import Pair, hold_out, load_generation_data

    data = load_generation_data("csv", pairs_csv, None, test_frac=0.25, val_frac=0.25, seed=0)
    assert len(data.test) == 3 and len(data.val) == 2 and len(data.train) == 7
    assert data.sizes() == {"train": 7, "test": 3, "val": 2}
    paths = [{p.path for p in part} for part in (data.train, data.val, data.test)]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    assert load_generation_data("csv", pairs_csv, None, test_frac=0.25, seed=0).val == []  # default: none
    # whole patients go to validation together (mimic_cxr pairs: pNN/pSUBJECT/sSTUDY)
    many = [Pair(f"/x/{i}.jpg", "t", "p10", f"p10/p{i // 3}/s{i}") for i in range(30)]
    kept, held = hold_out(many, 0.2, seed=1)
    patients = lambda ps: {p.study.split("/")[1] for p in ps}  # noqa: E731
    assert not (patients(kept) & patients(held)) and 5 <= len(held) <= 9 and len(kept) + len(held) == 30
    (tmp_path / "s.csv").write_text("path,text,split\n" + "\n".join(
        f"{pairs_csv}/img/{i}.png,report {i},{s}" for i, s in enumerate(["train", "val", "test", "train", "validation"])))
    split = load_generation_data("csv", tmp_path / "s.csv", None)
    assert [len(split.train), len(split.val), len(split.test)] == [2, 2, 1]


def test_noise_norm_on_the_tiny_pipeline(tiny_dir):  # noqa: F811
    from trainer.diffusion import load_generation_pipeline
    from trainer.geneval.noise_norm import noise_norm_report, noise_norms

    pipe = load_generation_pipeline(str(tiny_dir))
    prompts = ["No acute cardiopulmonary abnormality.", "Large right pleural effusion.", ""]
    a = noise_norms(pipe, prompts, steps=2, generations=2, seed=0)
    b = noise_norms(pipe, prompts, steps=2, generations=2, seed=0)
    assert a == b and a[0] > 0 and a[1] > 0 and a[0] != a[1]
    assert a[2] == pytest.approx(0.0, abs=1e-6)  # the empty prompt is the unconditional one: no text pull
    rep = noise_norm_report(pipe, prompts[:2], prompts[1:2], steps=1, generations=1)
    assert rep["n_train_prompts"] == 2 and rep["ratio"] == pytest.approx(rep["train"] / rep["heldout"])


def test_table4_additions(tmp_path):
    import pandas as pd

    from trainer.study.report_generation import generation_section, pareto_mask

    assert pareto_mask([1, 2, 3, 2], [3, 1, 0.5, 2]) == [True, True, True, False]
    rows = []
    for i, (method, fid, mem) in enumerate((("lora", 50.0, 0.02), ("full", 40.0, 0.10), ("bias", 60.0, 0.05))):
        run = tmp_path / "runs" / method
        run.mkdir(parents=True)
        test = {k: {"mean": v, "std": 0.0, "values": [v]} for k, v in
                (("fid", fid), ("kid", fid / 1000), ("precision", 0.5), ("recall", 0.4), ("ms_ssim", 0.3),
                 ("memorization", mem))}
        (run / "results.json").write_text(json.dumps({"metrics": {"test": test},
                                                      "per_seed": [{"noise_norm": {"ratio": 1.1 + i}}]}))
        rows.append({"task": "generation", "method": method, "dataset": "mimic_cxr", "fraction": 0.1,
                     "n_train": 2262, "path": f"runs/{method}"})
    lines, written = generation_section(pd.DataFrame(rows), tmp_path, tmp_path)
    text = "\n".join(lines)
    assert "KID" in text and "memorized %" in text and "lora 0.1, full 0.1" in text and "bias" in text.split("front")[0]
    assert {p.name for p in written} == {"generation_metrics.csv", "memorization_vs_fid.png"}
    table = pd.read_csv(tmp_path / "generation_metrics.csv")
    assert list(table["memorized %"]) == [10.0, 2.0, 5.0]  # sorted by FID; percent


@pytest.mark.slow
def test_multi_objective_search_end_to_end(tiny_dir, pairs_csv, tmp_path):  # noqa: F811
    from trainer.hpo import main

    out = tmp_path / "search"
    rc = main(["--task", "generation", "--objectives", "fid,memorization", "--trials", "3", "--population", "2",
               "--method", "lora", "--dataset", "csv", "--data-dir", str(pairs_csv), "--base-model", str(tiny_dir),
               "--resolution", "32", "--max-train-steps", "2", "--validation-steps", "0", "--batch-size", "2",
               "--num-inference-steps", "2", "--fid-samples", "2", "--num-workers", "0", "--test-frac", "0.25",
               "--val-frac", "0.25", "--output-dir", str(out), "--hp", "rank=4", "--hp", "alpha=4"])
    assert rc == 0
    summary = json.loads((out / "pareto.json").read_text())
    assert summary["objectives"] == {"fid": "minimize", "memorization": "minimize"}
    assert len(summary["trials"]) == 3 and summary["front"] and summary["knee"] in summary["front"]
    for row in summary["trials"]:
        assert np.isfinite(row["fid"]) and 0 <= row["memorization"] <= 1 and "lr" in row["params"]
        assert "test" not in row  # trials are scored on validation only
        trial_dir = Path(row["output_dir"])
        assert not (trial_dir / "fid").exists() and not (trial_dir / "geneval" / "test.json").exists()
        results = json.loads((trial_dir / "results.json").read_text())
        assert not results["metrics"].get("test") and "fid" in results["metrics"]["val"]
        for card in trial_dir.rglob("medpeft.json"):
            assert not any(k.startswith("test") for k in json.loads(card.read_text()).get("metrics", {}))
    assert (out / "pareto.png").is_file() and (out / "pareto.csv").is_file()
    fronts = sorted((out / "front").glob("trial_*.yaml"))
    assert len(fronts) == len(summary["front"])
    assert (out / f"trial_{summary['knee']:04d}" / "geneval" / "val.json").is_file()


def test_validation_keeps_the_paper_training_size():
    """A fraction's training pairs are the same with and without validation; validation patients come from
    the pairs the fraction leaves unused."""
    from trainer.data.text2img import Pair, train_and_val

    pool = [Pair(f"/x/{i}.jpg", "t", "p10", f"p10/p{i // 2}/s{i}") for i in range(200)]
    plain, none = train_and_val(pool, 0.1, None, None, seed=3)
    train, val = train_and_val(pool, 0.1, None, 0.05, seed=3)
    assert none == [] and train == plain and len(train) == 20 and 9 <= len(val) <= 11
    assert not ({p.study.split("/")[1] for p in train} & {p.study.split("/")[1] for p in val})
    full, val = train_and_val(pool, 1.0, None, 0.05, seed=3)  # nothing unused: held out first
    assert len(full) + len(val) == 200 and len(val) >= 9


def test_search_command_line_errors(tiny_dir, pairs_csv, tmp_path, capsys):  # noqa: F811
    from trainer.hpo import main

    base = ["--task", "generation", "--method", "lora", "--dataset", "csv", "--data-dir", str(pairs_csv),
            "--base-model", str(tiny_dir), "--output-dir", str(tmp_path / "s")]
    for extra, message in ((["--objectives", "fid,beauty", "--fid-samples", "4"], "unknown objective"),
                           (["--objectives", "fid,memorization"], "--fid-samples"),
                           (["--task", "classification", "--objectives", "fid"], "--task generation")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
