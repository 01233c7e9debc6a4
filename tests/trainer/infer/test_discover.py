"""Hub discovery against the local Hub double: pushed repos carry the search tags and card metrics, the
listing filters by task / dataset / backbone / method without downloading adapters, pull caches, offline is
one line."""
from __future__ import annotations

import json

import pytest

from adapters.backbones import TINY_CNN, TINY_VIT
from tests.helpers.apps import make_adapter
from tests.helpers.hubserver import FakeHub


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from trainer.hub import push_adapter

    root = tmp_path_factory.mktemp("discover")
    fake = FakeHub(token="hf_test", user="tester").start()
    specs = [("tester/vit-lora-ham", TINY_VIT, "lora", "ham10000", 0.61, True),
             ("tester/cnn-bitfit-ham", TINY_CNN, "bitfit", "ham10000", 0.55, True),
             ("tester/cnn-ssf-breastus", TINY_CNN, "ssf", "breastus", 0.7, True),
             ("tester/private-ssf", TINY_CNN, "ssf", "breastus", 0.4, False)]
    for repo, backbone, method, dataset, f1, public in specs:
        folder = make_adapter(root / repo.split("/")[1], backbone=backbone, method=method, dataset=dataset, f1=f1)
        cfg = json.loads((folder / "medpeft.json").read_text())
        cfg["calibration"] = {"test": {"before": {"ece": 0.2}, "after": {"ece": 0.05}},
                              "subgroups": {"sex": {"groups": {"F": {"n": 5, "score": f1 - 0.1},
                                                               "M": {"n": 6, "score": f1 + 0.1}},
                                                    "worst_group": "F", "gap": 0.2}}}
        (folder / "medpeft.json").write_text(json.dumps(cfg))
        push_adapter(folder, repo, private=not public, token="hf_test", endpoint=fake.url)
    # a repo without the medpeft tag is never listed by search
    from huggingface_hub import HfApi

    api = HfApi(endpoint=fake.url, token="hf_test")
    api.create_repo("tester/unrelated", private=False)
    api.upload_file(path_or_fileobj=b"---\ntags:\n- bert\n---\n# x\n", path_in_repo="README.md",
                    repo_id="tester/unrelated")
    yield fake
    fake.stop()


def _search(hub, tmp_path, **kw):
    from trainer.infer.discover import search_hub

    return search_hub(endpoint=hub.url, cache_dir=tmp_path / "cache", **kw)


def test_search_lists_by_tag_with_card_metrics_before_download(hub, tmp_path):
    listing = _search(hub, tmp_path)
    assert sorted(a.repo_id for a in listing) == ["tester/cnn-bitfit-ham", "tester/cnn-ssf-breastus",
                                                  "tester/vit-lora-ham"]  # public medpeft repos only
    a = next(a for a in listing if a.repo_id == "tester/vit-lora-ham")
    assert (a.method, a.dataset, a.task, a.backbone) == ("lora", "ham10000", "classification", TINY_VIT)
    assert a.headline == "f1_macro" and a.headline_value == pytest.approx(0.61)
    assert a.worst_group == pytest.approx(0.51) and a.ece == pytest.approx(0.05)
    assert a.trainable_params and a.trainable_params > 0 and not a.cached
    # nothing but the listing was fetched: no adapter file downloaded
    assert not any("resolve" in path for _, path, _ in hub.log if "vit-lora-ham" in path)
    d = a.to_dict()
    assert d["source"] == "hub-listing" and d["key"] == "hub:tester/vit-lora-ham" and "ECE 0.050" in d["label"]


@pytest.mark.parametrize("kw,expected", [
    ({"dataset": "ham10000"}, {"tester/vit-lora-ham", "tester/cnn-bitfit-ham"}),
    ({"method": "ssf"}, {"tester/cnn-ssf-breastus"}),
    ({"backbone": TINY_CNN, "dataset": "ham10000"}, {"tester/cnn-bitfit-ham"}),
    ({"task": "classification", "method": "All"}, {"tester/vit-lora-ham", "tester/cnn-bitfit-ham",
                                                   "tester/cnn-ssf-breastus"}),
    ({"task": "multilabel"}, set()),
])
def test_search_filters(hub, tmp_path, kw, expected):
    assert {a.repo_id for a in _search(hub, tmp_path, **kw)} == expected


def test_named_repos_are_added_and_filtered(hub, tmp_path):
    from trainer.infer.discover import search_hub

    listing = search_hub(method="ssf", repos=["tester/private-ssf", "tester/no-such-repo"], endpoint=hub.url,
                         token="hf_test", cache_dir=tmp_path / "c")
    ids = {a.repo_id for a in listing}
    assert "tester/private-ssf" in ids and "tester/vit-lora-ham" not in ids
    assert any("tester/no-such-repo" in m for m in listing.messages)


def test_pull_caches_and_is_served(hub, tmp_path):
    from PIL import Image

    from trainer.infer import Predictor
    from trainer.infer.discover import adapter_listing, pull

    steps = []
    folder = pull("tester/cnn-ssf-breastus", endpoint=hub.url, cache_dir=tmp_path / "cache",
                  progress=lambda f, m: steps.append(f))
    assert steps[0] == 0.0 and steps[-1] == 1.0 and (folder / "medpeft.json").is_file()
    listing = _search(hub, tmp_path, method="ssf")
    assert next(a for a in listing if a.repo_id == "tester/cnn-ssf-breastus").cached
    pred = Predictor(pretrained=False, device="cpu").predict(folder, Image.new("RGB", (32, 32), (9, 99, 199)))
    assert abs(sum(pred.probs.values()) - 1) < 1e-5
    rows = adapter_listing([], listing, where=lambda r: r["method"] == "ssf")
    assert [r["key"] for r in rows] == ["hub:tester/cnn-ssf-breastus"]


def test_offline_is_one_line(tmp_path):
    from tests.helpers.apps import free_port
    from trainer.infer.discover import search_hub

    listing = search_hub(endpoint=f"http://127.0.0.1:{free_port()}", cache_dir=tmp_path)
    assert listing == [] and listing.offline and len(listing.messages) == 1
    assert "\n" not in listing.messages[0] and "local adapters" in listing.messages[0]
