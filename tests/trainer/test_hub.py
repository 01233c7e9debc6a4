"""trainer.hub against a fake Hub (tests/helpers/hubserver.py) driven by the real huggingface_hub client.

The acceptance line: a LoRA adapter pushed with ``push_adapter`` loads back with plain
``peft.PeftModel.from_pretrained(base, "org/name")`` and gives the same logits.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from tests.helpers.hubserver import FakeHub

TOKEN = "hf_TestToken_9f8e7d6c5b4a"
REPO = "org/name"
ADAPTER_FILES = {"medpeft.json", "adapter_model.safetensors", "adapter_config.json", "README.md"}
RESULTS = {  # what trainer.classify.summarise writes (the parts the card uses)
    "dataset": "ham10000", "seeds": [0, 1], "fraction": 1.0,
    "split_sizes": {"train": 40, "val": 8, "test": 12},
    "metrics": {"test": {"f1_macro": {"mean": 0.6123, "std": 0.02, "values": [0.5982, 0.6264]},
                         "accuracy": {"mean": 0.7, "std": 0.0, "values": [0.7, 0.7]},
                         "auroc": {"mean": 0.8456, "std": 0.01, "values": [0.8385, 0.8527]}}},
    "per_seed": [{"seed": 0, "test": {"f1_macro": 0.5982, "headline": "f1_macro"}},
                 {"seed": 1, "test": {"f1_macro": 0.6264, "headline": "f1_macro"}}],
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The fake Hub, with huggingface_hub pointed at it (its constants are read at import time,
    so they are patched as well as the environment) and a private HF home / cache / token file.
    The real client must never reach huggingface.co from here: every request goes to the fake."""
    import huggingface_hub.constants as C

    fake = FakeHub(token=TOKEN, user="tester", orgs=("org",)).start()
    home = tmp_path_factory.mktemp("hf_home")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"HF_ENDPOINT": fake.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
                     "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
            mp.setenv(k, v)
        for k in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_CACHE", "HF_XET_CACHE"):
            mp.delenv(k, raising=False)
        for k, v in {"ENDPOINT": fake.url,
                     "HUGGINGFACE_CO_URL_TEMPLATE": fake.url + "/{repo_id}/resolve/{revision}/{filename}",
                     "HF_HUB_DISABLE_XET": True, "HF_HUB_OFFLINE": False, "HF_HOME": str(home),
                     "HF_HUB_CACHE": str(home / "hub"), "HF_XET_CACHE": str(home / "xet"),
                     "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
                     "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json")}.items():
            mp.setattr(C, k, v)
        import huggingface_hub.hf_api

        # the module-level functions (file_exists, model_info ... used by peft) are bound to one HfApi
        # made at import: point it at the fake too
        mp.setattr(huggingface_hub.hf_api.api, "endpoint", fake.url)
        yield fake
    fake.stop()


def _base():
    from adapters import create_backbone

    torch.manual_seed(0)
    return create_backbone("medpeft_tiny_vit", 3, pretrained=False)


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    """A tiny ViT + LoRA, trained a few steps (LoRA B non-zero), saved with junk beside it, pushed."""
    from adapters import apply_method
    from adapters.io import AdapterConfig, save_adapter
    from trainer.hub import push_adapter

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    base_logits = _base().eval()(x).detach()
    model = apply_method(_base(), "lora")
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    y = torch.tensor([0, 1, 2, 1])
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    model.eval()
    logits = model(x).detach()
    assert not torch.allclose(logits, base_logits, atol=1e-4)  # the adapter changes the outputs

    folder = tmp_path_factory.mktemp("run") / "adapter"
    cfg = AdapterConfig(method="lora", backbone="medpeft_tiny_vit", num_classes=3, class_names=["a", "b", "c"],
                        dataset="ham10000", metrics={"test_f1_macro": 0.5982, "test_accuracy": 0.7},
                        training={"seed": 0, "epochs": 1, "n_train": 40, "fraction": 1.0})
    save_adapter(model, folder, cfg)
    (folder / "checkpoint").mkdir()  # things an adapter folder may sit next to: never uploaded
    (folder / "checkpoint" / "trainer_state.pt").write_bytes(b"optimizer state")
    (folder / "optimizer.pt").write_bytes(b"optimizer")
    (folder / "best.safetensors").write_bytes(b"not an adapter file")
    (folder / "history.json").write_text("[]")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    url = push_adapter(folder, REPO, results=RESULTS)
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    return {"folder": folder, "x": x, "logits": logits, "url": url, "unchanged": before == after}


def test_push_creates_private_repo_with_adapter_files_only(hub, pushed):
    from huggingface_hub import HfApi

    assert pushed["url"] == f"{hub.url}/{REPO}"
    assert hub.repos[REPO]["private"] is True
    assert pushed["unchanged"]  # the local folder is not modified
    files = set(HfApi(endpoint=hub.url).list_repo_files(REPO))
    assert files == ADAPTER_FILES | {".gitattributes"}
    stored = hub.files(REPO)
    for name in ("medpeft.json", "adapter_model.safetensors", "adapter_config.json"):
        assert stored[name] == (pushed["folder"] / name).read_bytes()
    assert any(m == "POST" and "/commit/main" in p and s == 200 for m, p, s in hub.log)


def test_pull_then_load_adapter_gives_identical_logits(hub, pushed, tmp_path):
    from adapters.io import load_adapter
    from trainer.hub import pull_adapter

    path = pull_adapter(REPO, cache_dir=tmp_path / "cache")
    assert {p.name for p in path.iterdir()} == ADAPTER_FILES
    model, config = load_adapter(path, model=_base())
    assert config.method == "lora" and config.backbone == "medpeft_tiny_vit"
    with torch.no_grad():
        torch.testing.assert_close(model(pushed["x"]), pushed["logits"], rtol=0, atol=1e-6)


def test_plain_peft_from_pretrained_loads_the_pushed_repo(hub, pushed):
    from peft import PeftModel

    from adapters.methods.lora import split_qkv

    # LoRA's default targets q and v: the base's fused qkv is split first, as adapters.methods.lora documents.
    model = PeftModel.from_pretrained(split_qkv(_base()), REPO).eval()  # the Hub id, resolved through HF_ENDPOINT
    with torch.no_grad():
        torch.testing.assert_close(model(pushed["x"]), pushed["logits"], rtol=0, atol=1e-6)


def test_model_card_on_the_hub(hub, pushed):
    from huggingface_hub import ModelCard

    from adapters.io import PAPER_CITATION

    card = ModelCard.load(REPO)
    d = card.data
    assert d.base_model is None  # the tiny test ViT has no Hub weights: no made-up base_model
    assert "No `base_model` is named: medpeft_tiny_vit has no pretrained weights on the Hub" in card.text
    assert d.library_name == "peft"
    assert {"medpeft", "medical-imaging", "lora", "ham10000"} <= set(d.tags)
    assert d.datasets == ["ham10000"]
    n = json.loads((pushed["folder"] / "medpeft.json").read_text())["trainable_params"]
    evals = {(e.metric_type, e.dataset_split): e.metric_value for e in d.eval_results}
    assert evals == {("f1_macro", "test"): 0.6123, ("accuracy", "test"): 0.7, ("auroc", "test"): 0.8456,
                     ("trainable_params", None): n}
    # the tags the app's Hub search filters by (issue 21): medpeft, method, dataset, task, base model id
    assert {"classification", "medpeft_tiny_vit", "medpeft-method:lora", "medpeft-dataset:ham10000",
            "medpeft-task:classification", "medpeft-backbone:medpeft_tiny_vit"} <= set(d.tags)
    assert all(e.task_type == "image-classification" and e.dataset_type == "ham10000" for e in d.eval_results)
    assert PAPER_CITATION in card.text
    assert n and f"trainable parameters: {n:,} of " in card.text
    assert "seeds: 0, 1" in card.text and "train 40, val 8, test 12" in card.text


def test_token_never_written_or_printed(hub, pushed, tmp_path, capfd):
    from trainer.hub import main

    assert main(["push", str(pushed["folder"]), "org/cli-copy"]) == 0
    assert main(["pull", "org/cli-copy", "--dest", str(tmp_path / "dest")]) == 0
    out, err = capfd.readouterr()
    assert "org/cli-copy" in out
    assert TOKEN not in out + err
    import huggingface_hub.constants as C

    places = [pushed["folder"], tmp_path / "dest", C.HF_HOME]  # HF_HOME: the test's own (cache, no token file)
    for root in places:
        for p in Path(root).rglob("*"):
            if p.is_file():
                assert TOKEN.encode() not in p.read_bytes(), p
    for repo in (REPO, "org/cli-copy"):
        for name, data in hub.files(repo).items():
            assert TOKEN.encode() not in data, (repo, name)


def test_push_without_token(hub, pushed, monkeypatch, capfd):
    from trainer.hub import HubError, main, push_adapter

    monkeypatch.delenv("HF_TOKEN")
    n = len(hub.log)
    with pytest.raises(HubError, match=r"no Hugging Face token.*hf auth login.*HF_TOKEN"):
        push_adapter(pushed["folder"], "org/no-token")
    assert len(hub.log) == n and "org/no-token" not in hub.repos  # refused before any request
    assert main(["push", str(pushed["folder"]), "org/no-token"]) == 1
    assert "no Hugging Face token" in capfd.readouterr().err


def test_push_with_rejected_token(hub, pushed):
    from trainer.hub import HubError, push_adapter

    with pytest.raises(HubError) as e:
        push_adapter(pushed["folder"], "org/bad-token", token="hf_wrong_token_123")
    msg = str(e.value)
    assert "401" in msg and "hf auth login" in msg and "HF_TOKEN" in msg
    assert "hf_wrong_token_123" not in msg and TOKEN not in msg
    assert "org/bad-token" not in hub.repos


def test_push_to_a_namespace_without_write_access(hub, pushed):
    from trainer.hub import HubError, push_adapter

    with pytest.raises(HubError, match=r"403.*write access"):
        push_adapter(pushed["folder"], "someone-else/name")


def test_unreachable_hub(pushed, tmp_path):
    from trainer.hub import HubError, pull_adapter, push_adapter

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(HubError, match=r"could not reach .*HF_ENDPOINT"):
        push_adapter(pushed["folder"], "org/x", token=TOKEN, endpoint=dead)
    with pytest.raises(HubError, match=r"could not reach .*HF_ENDPOINT"):
        pull_adapter("org/x", cache_dir=tmp_path, endpoint=dead)


def test_pull_private_repo_without_token_or_missing_repo(hub, pushed, tmp_path):
    from trainer.hub import HubError, pull_adapter

    with pytest.raises(HubError, match=r"not found, or it is private"):
        pull_adapter(REPO, cache_dir=tmp_path / "a", token=False)
    with pytest.raises(HubError, match=r"not found"):
        pull_adapter("org/does-not-exist", cache_dir=tmp_path / "b")


def test_push_refuses_a_non_adapter_folder(hub, tmp_path):
    from trainer.hub import HubError, push_adapter

    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(HubError, match="medpeft.json not found"):
        push_adapter(tmp_path, "org/junk")
    assert "org/junk" not in hub.repos


def test_repush_other_method_removes_stale_peft_config(hub, pushed, tmp_path):
    """bitfit over the lora repo: adapter_config.json (peft) goes, the card says timm; the result
    of the CLI's results.json discovery (``<run>/seed_N/adapter``) shows in the card."""
    from huggingface_hub import ModelCard

    from adapters import apply_method
    from adapters.io import AdapterConfig, save_adapter
    from trainer.hub import main, pull_adapter

    assert main(["push", str(pushed["folder"]), "org/switch", "--public"]) == 0
    assert hub.repos["org/switch"]["private"] is False
    run = tmp_path / "run"
    folder = run / "seed_0" / "adapter"
    save_adapter(apply_method(_base(), "bitfit"), folder,
                 AdapterConfig(method="bitfit", backbone="medpeft_tiny_vit", num_classes=3, dataset="ham10000"))
    (run / "results.json").write_text(json.dumps({**RESULTS, "adapter_dir": "seed_0/adapter"}))
    assert main(["push", str(folder), "org/switch"]) == 0
    assert set(hub.files("org/switch")) == ADAPTER_FILES - {"adapter_config.json"} | {".gitattributes"}
    card = ModelCard.load("org/switch")
    assert card.data.library_name == "timm" and "bitfit" in card.data.tags and "lora" not in card.data.tags
    assert {e.metric_type: e.metric_value for e in card.data.eval_results}["f1_macro"] == 0.6123
    path = pull_adapter("org/switch", cache_dir=tmp_path / "cache")
    assert not (path / "adapter_config.json").exists()


def test_push_through_default_upload_pipeline(hub, pushed, monkeypatch):
    """With hf_xet installed (and HF_HUB_DISABLE_XET unset) upload_folder takes its pipelined
    path; the fake Hub's "regular" upload mode keeps it off the network too."""
    pytest.importorskip("hf_xet")
    import huggingface_hub.constants as C

    from trainer.hub import push_adapter

    monkeypatch.setattr(C, "HF_HUB_DISABLE_XET", False)
    push_adapter(pushed["folder"], "org/pipelined")
    assert set(hub.files("org/pipelined")) == ADAPTER_FILES | {".gitattributes"}


def test_card_snippet_runs_as_written_and_gives_the_adapters_outputs(tmp_path):
    """The model card's plain timm + peft snippet, executed as written, loads the adapter with the
    same outputs as MedPEFT's own loader (LoRA's default q+v targets need the qkv split it shows)."""
    from adapters import apply_method, create_backbone
    from adapters.io import AdapterConfig, load_adapter, peft_snippet, save_adapter

    torch.manual_seed(0)
    model = apply_method(create_backbone("medpeft_tiny_vit", 3, pretrained=False), "lora")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    folder = save_adapter(model, tmp_path / "adapter", AdapterConfig(method="lora", backbone="medpeft_tiny_vit",
                                                                     num_classes=3, pretrained=False))
    snippet = peft_snippet(load_adapter(folder)[1], str(folder))
    assert "pretrained=False" in snippet and "split_qkv" in snippet
    torch.manual_seed(0)
    plain = create_backbone("medpeft_tiny_vit", 3, pretrained=False).eval()
    torch.manual_seed(0)  # the base's random weights, as the adapter was built on them
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - our own generated snippet, run as a user would
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(scope["model"](x), model(x), rtol=0, atol=1e-5)
        assert not torch.allclose(scope["model"](x), plain(x), atol=1e-4)  # the adapter is applied


def test_adapter_trained_from_random_weights_has_no_base_model_and_loads_offline(tmp_path, monkeypatch):
    from adapters import apply_method, create_backbone
    from adapters.io import AdapterConfig, load_adapter, save_adapter
    from trainer.card import build_model_card

    model = apply_method(create_backbone("resnet18", 3, pretrained=False), "bitfit")
    cfg = AdapterConfig(method="bitfit", backbone="resnet18", num_classes=3, pretrained=False)
    folder = save_adapter(model, tmp_path / "a", cfg)
    card = build_model_card(cfg)
    assert "base_model:" not in card.split("\n---\n")[0] and "random weights (--no-pretrained)" in card
    import timm.models._builder as timm_builder

    def no_hub(*a, **k):
        raise AssertionError("the Hub was asked for weights")

    for name in ("load_state_dict_from_hf", "download_cached_file", "load_state_dict_from_url"):
        if hasattr(timm_builder, name):
            monkeypatch.setattr(timm_builder, name, no_hub)
    loaded, read = load_adapter(folder)  # pretrained=False from the config: no download attempted
    assert read.pretrained is False
