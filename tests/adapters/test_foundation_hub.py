"""Presets by Hub id, against the project's local Hub double: a download is converted and matches the
source library; a gated repo without a token is refused in one line naming the licence, the page and
HF_TOKEN."""
from __future__ import annotations

import pytest
import torch

from adapters import create_backbone
from adapters.backbones import BackboneError
from tests.helpers import foundation_repos as R
from tests.helpers.hubserver import FakeHub

TOKEN = "hf_foundation_test"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The fake Hub with huggingface_hub pointed at it (constants are read at import: patched too)."""
    import huggingface_hub.constants as C
    import huggingface_hub.hf_api

    fake = FakeHub(token=TOKEN, user="tester", orgs=("microsoft", "MahmoodLab")).start()
    home = tmp_path / "hf_home"
    for k, v in {"HF_ENDPOINT": fake.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
                 "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
                 "MEDPEFT_CACHE": str(tmp_path / "medpeft-cache")}.items():
        monkeypatch.setenv(k, v)
    for k in ("HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_XET_CACHE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in {"ENDPOINT": fake.url,
                 "HUGGINGFACE_CO_URL_TEMPLATE": fake.url + "/{repo_id}/resolve/{revision}/{filename}",
                 "HF_HUB_DISABLE_XET": True, "HF_HUB_OFFLINE": False, "HF_HOME": str(home),
                 "HF_HUB_CACHE": str(home / "hub"), "HF_XET_CACHE": str(home / "xet"),
                 "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens")}.items():
        monkeypatch.setattr(C, k, v)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", fake.url)
    yield fake
    fake.stop()


def _upload(hub, folder, repo_id):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(repo_id)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id)


def test_preset_downloads_its_hub_repo_and_converts_exactly(hub, tmp_path):
    folder, embed = R.dinov2_repo(tmp_path / "repo")
    _upload(hub, folder, "microsoft/rad-dino")
    model = create_backbone("rad-dino", 0).eval()  # pretrained: from the Hub id of the preset
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert (model(x) - embed(x)).abs().max().item() < 1e-4
    assert model.pretrained_cfg["hf_hub_id"] == "microsoft/rad-dino"
    # by its Hub id too, as a new user types it
    again = create_backbone("microsoft/rad-dino", 0).eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_gated_repo_without_token_says_which_licence_to_accept(hub, tmp_path, monkeypatch):
    folder, embed = R.timm_repo(tmp_path / "repo", init_values=1e-5, dynamic_img_size=True, img_size=32,
                                embed_dim=32, depth=2, num_heads=2)
    _upload(hub, folder, "MahmoodLab/UNI")
    from huggingface_hub import HfApi

    HfApi(endpoint=hub.url, token=TOKEN).update_repo_settings("MahmoodLab/UNI", gated="manual")  # = hub.gate(...)
    assert "MahmoodLab/UNI" in hub.gated
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(BackboneError) as err:
        create_backbone("uni", 0)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("cc-by-nc-nd-4.0", "https://huggingface.co/MahmoodLab/UNI", "HF_TOKEN", "accept"):
        assert part in msg, msg
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # licence accepted, token set: the download goes through
    model = create_backbone("uni", 0).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - embed(x)).abs().max().item() < 1e-4


def test_unreachable_hub_points_to_a_local_copy(hub, monkeypatch):
    monkeypatch.setattr("huggingface_hub.hf_api.api.endpoint", "http://127.0.0.1:9")
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(BackboneError, match="--init-checkpoint DIR"):
        create_backbone("phikon-v2", 0)
