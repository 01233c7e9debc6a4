"""The app's pieces without a server: settings read once from the environment, tab handlers called
directly (updates keyed by component), plain errors, the views, and the layering rules (trainer/
never imports gradio; only app.py imports ui)."""
from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import pytest

from tests.helpers import CLASSES, make_adapter, retina_png

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import app
    from trainer.infer import Predictor

    root = tmp_path_factory.mktemp("tabs")
    make_adapter(root / "runs" / "breastus" / "bitfit")
    make_adapter(root / "runs" / "chest" / "ssf", method="ssf", dataset="chest-tiny", seed=1)
    demo = app.build_app(root / "runs", hub_repos=[], predictor=Predictor(pretrained=False), create_demo=False,
                         sd_base="", examples_dir=root / "examples", train_dir=root / "scratch")
    demo.medpeft_root = root
    yield demo
    demo.close()


def test_settings_read_every_variable_once():
    from ui.settings import Settings

    env = {"MEDPEFT_ADAPTERS_DIR": "/srv/runs", "MEDPEFT_HUB_ADAPTERS": " org/a, org/b ,", "MEDPEFT_SD_BASE": "sd",
           "MEDPEFT_RESULTS_DIRS": f"/r1{__import__('os').pathsep}/r2", "MEDPEFT_DATA_ROOTS": "/data",
           "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7999"}
    s = Settings.from_env(env)
    assert (s.adapters_dir, s.hub_repos, s.sd_base, s.results_dirs, s.data_roots, s.host, s.port) == (
        Path("/srv/runs"), ("org/a", "org/b"), "sd", ("/r1", "/r2"), ("/data",), "0.0.0.0", 7999)
    assert Settings.from_env({}) == Settings()
    over = Settings.from_env(env, adapters_dir="here", hub_repos=[], sd_base=None)
    assert over.adapters_dir == Path("here") and over.hub_repos == () and over.sd_base == "sd"


def test_classify_handler_returns_updates_keyed_by_component(demo, tmp_path):
    tab = demo.medpeft_tabs["classify"]
    out = tab.classify(str(retina_png(tmp_path / "r.png")), "breastus/bitfit", True)
    assert set(out) == {tab.label_out, tab.seen_out, tab.cam_out, tab.details_out}
    assert set(out[tab.label_out]) == set(CLASSES) and sum(out[tab.label_out].values()) == pytest.approx(1, abs=1e-4)
    assert Path(out[tab.seen_out]).is_file() and Path(out[tab.cam_out]).is_file()
    assert out[tab.cam_out] != out[tab.seen_out] and "bitfit" in out[tab.details_out]
    assert tab.classify(str(tmp_path / "r.png"), "breastus/bitfit", False)[tab.cam_out] is None
    with pytest.raises(gr.Error, match="unknown adapter"):
        tab.classify(str(tmp_path / "r.png"), "no/such", True)


def test_rescan_updates_the_pickers_of_every_tab(demo):
    classify, generate = demo.medpeft_tabs["classify"], demo.medpeft_tabs["generate"]
    out = classify.rescan("chest-tiny", "All", "breastus/bitfit", scan=False)
    assert set(out) == {classify.dataset_dd, classify.adapter_dd, classify.compare_box, generate.adapter_dd,
                        classify.status_md}
    assert out[classify.dataset_dd]["value"] == "chest-tiny"
    assert out[classify.adapter_dd]["value"] == "chest/ssf"  # the current one is filtered out: the first left
    assert [v for _, v in out[classify.adapter_dd]["choices"]] == ["chest/ssf"]
    assert "2 classification and 0 generation adapter(s)" in out[classify.status_md]


def test_leaderboard_view_keys_and_filters(demo):
    tab = demo.medpeft_tabs["leaderboard"]
    out = tab.view(["classification"], [], ["breastus"], [], [])
    assert set(out) == {tab.board, tab.summary, tab.groups, tab.attribute, tab.pareto, tab.volume,
                        *tab.filters.values()}
    assert len(out[tab.board]) and set(out[tab.board]["dataset"]) == {"breastus"}
    assert out[tab.filters["dataset"]]["value"] == ["breastus"]


def test_train_refuses_bad_form_before_any_work(demo):
    tab = demo.medpeft_tabs["train"]
    stream = tab.train(None, "upload", "", None, "adaptformer", False, 3, 1, 8, 5e-3, 32, "x")
    first = next(stream)
    assert set(first) == {tab.status} and "Could not start training" in first[tab.status]
    with pytest.raises(gr.Error, match="not a PEFT method for CNN"):
        next(stream)
    stream = tab.train(None, "upload", "", None, None, False, 3, 0, 8, 5e-3, 32, "x")
    next(stream)
    with pytest.raises(gr.Error, match="epochs"):  # TrainConfig.validate()'s message
        next(stream)
    assert not [p for p in (demo.medpeft_root / "scratch").rglob("*") if p.is_file()]


def test_stop_without_training_and_methods_update(demo):
    tab = demo.medpeft_tabs["train"]
    assert tab.stop_training(None) == "No training is running in this session."
    assert tab.methods_update("vit_small_patch16_224")["value"] == "lora"
    assert tab.methods_update(None)["value"] == "ssf"


def test_user_errors_are_plain():
    from trainer.data import DataError
    from ui.errors import user_errors

    @user_errors("do it")
    def bad(kind):
        raise DataError("a plain problem") if kind == "data" else KeyError("x")

    with pytest.raises(gr.Error) as err:
        bad("data")
    assert err.value.message == "a plain problem" and err.value.title == "Could not do it"
    with pytest.raises(gr.Error, match="unexpected KeyError while trying to do it"):
        bad("bug")


def test_views():
    from ui import views

    html = views.train_status_html("<b>phase</b>", "detail", 1.7, error=True)
    assert "&lt;b&gt;phase" in html and 'value="1000"' in html and "medpeft-error" in html
    fig = views.confusion_figure([[3, 1], [0, 4]], ["a", "b"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b"]
    fig = views.training_curve_figure({"trial 1": [{"epoch": 1, "val": 0.5, "loss": 1.0}], "final run": []})
    assert len(fig.axes[0].lines) == 1


def test_layers_point_one_way():
    for path in (ROOT / "trainer").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import gradio|from gradio)", text, re.M), path
        assert not re.search(r"^\s*(import ui|from ui)\b", text, re.M), path
    for path in (ROOT / "adapters").rglob("*.py"):
        assert not re.search(r"^\s*(import|from) (gradio|ui|trainer)\b", path.read_text(), re.M), path
    app_lines = (ROOT / "app.py").read_text().splitlines()
    assert len(app_lines) < 40
