"""The app serving a zoo through its API (issue 21): eight adapters of mixed methods on one ViT share one
frozen base (the app's memory grows by their own tensors, not a base per adapter); /compare reports memory;
the Hub listing reaches /adapters and /search_hub; /pull_hub_adapter pulls and the adapter classifies."""
from __future__ import annotations

import json
import uuid

import pytest
import torch

from adapters import apply_method, create_backbone, data_config
from adapters.backbones import TINY_VIT
from adapters.io import AdapterConfig, save_adapter
from tests.helpers.apps import make_adapter, retina_png, start_app
from tests.helpers.hubserver import FakeHub

pytestmark = pytest.mark.slow  # an app on a port + a fake Hub: ~15 s

ZOO = [("lora", {"rank": 4, "alpha": 4}), ("lora", {"rank": 16, "alpha": 16}), ("bitfit", {}), ("ssf", {}),
       ("adaptformer", {}), ("vpt_deep", {}), ("layernorm", {}), ("dora", {})]


def zoo_adapter(folder, i, method, hp):
    torch.manual_seed(i)
    model = apply_method(create_backbone(TINY_VIT, 3, pretrained=False), method, **hp)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    cfg = AdapterConfig(method=method, backbone=TINY_VIT, num_classes=3, class_names=["a", "b", "c"],
                        data_config=data_config(model), dataset="zoo", pretrained=False, temperature=1.0 + i / 10)
    return save_adapter(model, folder, cfg)


@pytest.fixture(scope="module")
def app_zoo(tmp_path_factory):
    import app
    from gradio_client import Client

    from trainer.hub import push_adapter
    from trainer.infer import Predictor

    root = tmp_path_factory.mktemp("app-zoo")
    for i, (method, hp) in enumerate(ZOO):
        zoo_adapter(root / "runs" / f"{i}-{method}", i, method, hp)
    hub = FakeHub(token="hf_test", user="tester").start()
    repo = f"tester/tiny-ssf-{uuid.uuid4().hex[:8]}"  # unique: the HF cache is keyed by repo id, not endpoint
    push_adapter(make_adapter(root / "to-push", method="ssf", dataset="ham10000"), repo, private=False,
                 token="hf_test", endpoint=hub.url)
    demo = app.build_app(root / "runs", hub_repos=[], predictor=Predictor(pretrained=False), create_demo=False,
                         sd_base="", examples_dir=root / "examples", hub_endpoint=hub.url)
    url = start_app(demo)
    yield {"client": Client(url, verbose=False), "state": demo.medpeft_state, "root": root, "hub": hub, "repo": repo}
    demo.close()
    hub.stop()


def test_zoo_shares_one_base_through_the_api(app_zoo):
    from gradio_client import handle_file

    client, state = app_zoo["client"], app_zoo["state"]
    image = retina_png(app_zoo["root"] / "retina.png")
    keys = [a.key for a in state.classifiers() if a.dataset == "zoo"]
    assert len(keys) == 8
    table = client.predict(handle_file(str(image)), keys, api_name="/compare")
    rows = [dict(zip(table["headers"], r)) for r in table["data"]]
    assert all(r["top class"] in ("a", "b", "c") and not r["note"] for r in rows), rows
    assert all(isinstance(r["memory MB"], (int, float)) for r in rows)
    mem = state.predictor.memory()
    server = state.predictor.server
    assert len(server.bases) == 1  # one frozen base for the eight adapters
    assert mem["adapters"] == sum(a.bytes for a in server.adapters.values())
    assert len({s.key for b in server.bases.values() for s in b.structures.values()}) == 8
    # each classify answer equals the compare row (switching back and forth is exact)
    for key, row in list(zip(keys, rows))[::-1]:
        label, *_ = client.predict(handle_file(str(image)), key, False, api_name="/classify")
        top = max(label["confidences"], key=lambda c: c["confidence"])
        assert top["label"] == row["top class"] and top["confidence"] == pytest.approx(row["probability"], abs=1e-4)


def test_hub_listing_search_and_pull(app_zoo):
    from gradio_client import handle_file

    client, state, repo = app_zoo["client"], app_zoo["state"], app_zoo["repo"]
    listed = client.predict(api_name="/adapters")
    hub_rows = [r for r in listed if r["source"] == "hub-listing"]
    assert [r["key"] for r in hub_rows] == [f"hub:{repo}"]
    assert hub_rows[0]["method"] == "ssf" and hub_rows[0]["dataset"] == "ham10000" and not hub_rows[0]["cached"]
    table, note, _choices = client.predict("All", "ham10000", "", "ssf", api_name="/search_hub")
    assert [r[0] for r in table["data"]] == [repo] and "1 MedPEFT adapter" in note
    table, note, _ = client.predict("All", "no-such-dataset", "", "All", api_name="/search_hub")
    assert table["data"] == [] or table["data"] == [[None] * len(table["headers"])]
    client.predict(repo, "All", "All", api_name="/pull_hub_adapter")
    assert state.adapters.get(f"hub:{repo}") is not None
    label, *_ = client.predict(handle_file(str(app_zoo["root"] / "retina.png")), f"hub:{repo}", False,
                               api_name="/classify")
    assert sum(c["confidence"] for c in label["confidences"]) == pytest.approx(1.0, abs=1e-3)
    listed = client.predict(api_name="/adapters")
    pulled = [r for r in listed if r["key"] == f"hub:{repo}"]
    assert len(pulled) == 1 and pulled[0]["source"] == "hub"  # listed once, as a pulled adapter
    assert json.dumps(listed)  # plain JSON for gradio_client scripts
