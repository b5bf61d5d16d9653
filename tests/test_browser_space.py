"""The app as a Space runs it: ``python app.py`` with no data folder (BRAIN_MRI_DATA names a missing one), in headless
Chromium at desktop and phone sizes. The Classify tab offers the shipped examples and classifies one; the Data tab
shows the precomputed counts, samples and audit. Screenshots go to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, free_port
from playwright.sync_api import expect
from shipped import require_shipped
from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

from brainmri.app.dataview import shipped_examples

SIZES = {"desktop": {"width": 1400, "height": 1000}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(scope="module")
def space_url(tmp_path_factory) -> Iterator[str]:
    """``python app.py`` as a Space starts it: offline, on a free port, with no data folder beside it."""
    require_shipped()
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium (.ci/run does)")
    port = free_port()
    missing = tmp_path_factory.mktemp("space") / "no-data-here"
    env = {
        **os.environ,
        "BRAIN_MRI_DATA": str(missing),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio")),
    }
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the app did not start: {proc.stdout.read() if proc.poll() is not None else 'timed out'}")
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
@pytest.mark.parametrize("size", list(SIZES))
def test_a_space_without_data_offers_examples_and_a_data_tab(space_url: str, size: str):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    phone = size == "phone"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=SIZES[size], is_mobile=phone, has_touch=phone)
            page.goto(space_url, wait_until="load", timeout=60_000)
            gallery = page.locator("#examples")
            expect(gallery).to_be_visible(timeout=30_000)
            expect(gallery.locator("img")).to_have_count(len(shipped_examples()))
            expect(page.locator("#input-col")).not_to_contain_text("unavailable")  # not under the model menu
            gallery.locator("img").first.click()
            expect(page.locator("#summary")).to_contain_text("Predicted class", timeout=60_000)
            expect(page.locator("#heatmap img")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / f"space_{size}_classify.png"), full_page=True)

            page.get_by_role("tab", name="Data").click()
            counts = page.locator("#counts")
            expect(counts).to_contain_text("glioma", timeout=60_000)
            expect(counts).to_contain_text("1321")  # Training's glioma count, from results/data_counts.json
            expect(page.get_by_text("precomputed").first).to_be_visible()
            page.get_by_role("button", name="Show the duplicate audit").click()
            audit = page.locator("#audit")
            expect(audit).to_contain_text(re.compile(r"\d+ Testing images have a near-identical copy in Training"), timeout=30_000)
            expect(audit).to_contain_text("mirrored")
            assert "no-data-here" not in page.locator("body").inner_text()  # no server path on the page
            if phone:
                assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
            page.screenshot(path=str(ARTIFACTS / f"space_{size}_data.png"), full_page=True)
        finally:
            browser.close()
