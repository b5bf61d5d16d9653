"""A real browser on the app: headless Debian Chromium driven by Playwright (no browser download).

Uploads a slice, sees the probability bars and the heatmap, switches models, compares,
uploads a broken file, opens each tab, and saves screenshots under tests/artifacts/ (git-ignored).
After the Classify and Compare steps, the server's folders hold nothing of the upload: not its bytes,
not its name, and no new file in Gradio's cache at all (heatmaps travel as data URLs).
"""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image
from shipped import require_shipped
from traces import files_containing, files_named, files_since

from brainmri.app.uploads import gradio_cache_dir

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def app_url():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium (.ci/run does)")
    require_shipped()
    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.demo.close()


@pytest.fixture
def secret_upload(data_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A real glioma slice re-saved under a secret name with the secret in a JPEG comment: findable anywhere."""
    secret = f"patient-{uuid.uuid4().hex}"
    path = tmp_path / f"{secret}.jpg"
    with Image.open(sorted((data_dir / "Testing" / "glioma").glob("*.jpg"))[0]) as slice_:
        slice_.save(path, quality=95, comment=secret.encode())
    return path, secret


@pytest.mark.slow
def test_upload_see_bars_and_heatmap_switch_models(app_url: str, secret_upload: tuple[Path, str]):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    image, secret = secret_upload
    t0 = time.time()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(app_url, wait_until="load", timeout=60000)
            expect(page.get_by_text("not for diagnosis").first).to_be_visible()

            page.locator("#upload input[type=file]").set_input_files(str(image))
            summary = page.locator("#summary")
            expect(summary).to_contain_text("tf_efficientnet_lite0", timeout=30_000)
            expect(summary).to_contain_text("Predicted class")
            bars = page.locator("#probabilities")
            for name in ("glioma", "meningioma", "notumor", "pituitary"):
                expect(bars).to_contain_text(name)
            heat = page.locator("#heatmap img")
            expect(heat).to_be_visible()
            assert heat.evaluate("img => img.naturalWidth") > 0
            page.screenshot(path=str(ARTIFACTS / "classify_lite0.png"), full_page=True)

            page.locator("#model input").click()
            options = page.get_by_role("option")
            expect(options.first).to_contain_text("EfficientNet · Lite0, ImageNet-initialised (99.2% on Testing)")
            page.get_by_role("option", name=re.compile(r"^Simple CNN · Sequential 1: 7 layers, 20 epochs \(\d+\.\d% on Testing\)")).click()
            expect(summary).to_contain_text("simple_cnn_7", timeout=30_000)
            expect(summary).to_contain_text("Predicted class")
            expect(heat).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "classify_simple_cnn_7.png"), full_page=True)

            page.get_by_role("tab", name="Compare").click()
            picker = page.locator("#compare-models")
            expect(picker).to_contain_text("Sequential 4 with 7x7 kernels")
            picker.get_by_label(re.compile("Sequential 2")).uncheck()  # a subset: one model fewer than all
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.locator("#agreement")).to_contain_text("agree", timeout=120_000)
            expect(page.locator("#agreement")).to_contain_text(" models in ")
            page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)
            written = files_since(t0, gradio_cache_dir(), skip=image.parent)  # before the tabs that show dataset files

            page.get_by_role("tab", name="Classify").click()
            broken = image.with_name(f"{secret}-broken.png")
            broken.write_bytes(b"not an image at all")
            page.locator("#upload").get_by_label("Clear").click()
            page.locator("#upload input[type=file]").set_input_files(str(broken))
            expect(page.get_by_text("not an image").first).to_be_visible(timeout=30_000)
            expect(summary).not_to_contain_text("Predicted class")  # the previous image's answer is gone

            page.locator("#examples img").first.click()  # an example: classified at once, its name in the upload box
            expect(summary).to_contain_text("Predicted class", timeout=30_000)
            expect(page.locator("#upload")).to_contain_text(".jpg")

            page.get_by_role("tab", name="Experiments").click()
            expect(page.locator("#experiments-table")).to_contain_text("tf_efficientnet_lite0", timeout=30_000)
            expect(page.locator("#experiments-table")).to_contain_text("ECE")
            page.locator("#reliability").scroll_into_view_if_needed()
            expect(page.locator("#reliability img")).to_be_visible(timeout=30_000)  # the checkpoint's reliability diagram
            expect(page.locator("#seed-table")).to_contain_text("Sequential 4 with 7x7 kernels")
            expect(page.locator("#seed-table")).to_contain_text("measured on the official Testing split")
            page.screenshot(path=str(ARTIFACTS / "experiments.png"), full_page=True)

            page.get_by_role("tab", name="Data").click()
            expect(page.locator("#counts")).to_contain_text("glioma", timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "data.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "classify_simple_cnn_7.png").stat().st_size > 10_000
    assert written == [], "the UI left files in Gradio's cache"
    roots = sorted({gradio_cache_dir(), Path(tempfile.gettempdir()).resolve()})
    assert files_containing(secret.encode(), roots, skip=image.parent) == [], "an upload outlived its request"
    assert files_named(secret, roots, skip=image.parent) == []
