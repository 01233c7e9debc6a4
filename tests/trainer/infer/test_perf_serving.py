"""``python -m trainer.perf --serving``: figures, ratios and PASS/FAIL in one run (a tiny ViT here)."""
from __future__ import annotations

import json

from trainer.study.perf import main


def test_perf_serving_reports_memory_and_switch_ratios(tmp_path, capsys):
    out = tmp_path / "serving.json"
    assert main(["--serving", "--backbone", "medpeft_tiny_vit", "--adapters", "4", "--steps", "2",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "deep copies" in text and "targets:" in text and ("PASS" in text or "FAIL" in text)
    r = json.loads(out.read_text())
    assert r["adapters"] == 4 and len(r["per_adapter"]) == 4
    assert [a["method"] for a in r["per_adapter"]] == ["lora", "lora", "bitfit", "ssf"]
    # shared: the base once; copies: the base per adapter
    assert r["all_adapters_bytes"] < r["deep_copies_bytes"]
    assert r["deep_copies_bytes"] >= 4 * r["base_bytes"]
    assert r["all_adapters_bytes"] < 2 * r["base_bytes"]
    assert r["first_load_s"] > 0 and all(a["switch_ms"] >= 0 for a in r["per_adapter"])
    assert {t["name"].split(" ")[0] for t in r["targets"]} == {"4", "a"}


def test_perf_serving_rejects_no_adapters(capsys):
    assert main(["--serving", "--adapters", "0"]) == 2
    assert "--adapters must be at least 1" in capsys.readouterr().err
