"""End to end in a real browser: Debian's Chromium driven by Playwright uploads an image on the
Classify tab, clicks Classify and reads the predicted class from the page.

CI installs Chromium (``scripts/setup --test`` runs ``apt-get install -y chromium``); without it this
test fails and says so."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import CLASSES, make_adapter, retina_png, start_app

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # a real browser against a running server
CHROMIUM = os.environ.get("MEDPEFT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage"]


def test_classify_in_chromium(tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: install Chromium for the browser test "
                    "(sudo apt-get install -y chromium, or scripts/setup --test)")
    from playwright.sync_api import expect, sync_playwright

    import app
    from trainer.infer import Predictor

    make_adapter(tmp_path / "runs" / "breastus-bitfit", dataset="breastus-tiny")
    image = retina_png(tmp_path / "fundus.png")
    demo = app.build_app(tmp_path / "runs", hub_repos=[], predictor=Predictor(pretrained=False), create_demo=False,
                         examples_dir=tmp_path / "examples")
    url = start_app(demo)
    shot = ROOT / "test-artifacts" / "browser_classify.png"
    shot.parent.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1366, "height": 1000})
                page.goto(url, wait_until="domcontentloaded", timeout=60_000)
                page.get_by_role("tab", name="Classify").click()
                page.locator("#image-input input[type=file]").set_input_files(str(image))
                expect(page.locator("#image-input")).to_contain_text("fundus.png", timeout=30_000)
                page.locator("#classify-button").click()
                # gr.Label renders the top class as a heading inside #prediction.
                heading = page.locator("#prediction h2")
                expect(heading).to_have_text(heading_pattern(), timeout=60_000)
                predicted = heading.inner_text().strip()
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
    finally:
        demo.close()
    assert predicted in CLASSES, predicted


def heading_pattern():
    import re

    return re.compile("^(" + "|".join(map(re.escape, CLASSES)) + ")$")
