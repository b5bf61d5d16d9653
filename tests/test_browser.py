"""A real browser on the app: headless Debian Chromium driven by Playwright (no browser download).

Uploads a slice, sees the probability bars and the heatmap, switches models, compares,
uploads a broken file, opens each tab, and saves screenshots under tests/artifacts/ (git-ignored).
After the Classify and Compare steps, the server's folders hold nothing of the upload: not its bytes,
not its name, and no new file in Gradio's cache at all (heatmaps travel as data URLs).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect
from traces import files_containing, files_named, files_since

from brainmri.app.uploads import gradio_cache_dir
from brainmri.models.registry import APP_DEFAULT, DEFAULT_CLASSIFIER

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


@pytest.fixture(scope="module", autouse=True)
def chromium() -> None:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium (.ci/run does)")


@pytest.fixture
def secret_upload(data_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A real glioma slice re-saved under a secret name with the secret in a JPEG comment: findable anywhere."""
    secret = f"patient-{uuid.uuid4().hex}"
    path = tmp_path / f"{secret}.jpg"
    with Image.open(sorted((data_dir / "Testing" / "glioma").glob("*.jpg"))[0]) as slice_:
        slice_.save(path, quality=95, comment=secret.encode())
    return path, secret


def _box(page, selector: str) -> dict:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not displayed"
    return box


def _classify(page, path: Path, expected: str = "Predicted class") -> None:
    """Upload without clearing the box first (it empties itself after each upload), and wait for the answer."""
    page.locator("#upload input[type=file]").set_input_files(str(path))
    expect(page.locator("#summary")).to_contain_text(expected, timeout=60_000)


@pytest.mark.slow
def test_a_visitor_at_desktop_size(app_url: str, secret_upload: tuple[Path, str], data_dir: Path, tmp_path: Path):
    """Items 2-7 of the Space issue at 1400 x 1000: what the heatmap means, Compare, errors, tables, numbers that agree."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    image, secret = secret_upload
    t0 = time.time()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url, wait_until="load", timeout=60000)
            expect(page.get_by_text("not for diagnosis").first).to_be_visible()
            expect(page.locator("#upload")).to_contain_text("GIF")  # the label lists every accepted format

            _classify(page, image)
            summary, bars, key = page.locator("#summary"), page.locator("#prob-bars"), page.locator("#cam-key")
            expect(summary).to_contain_text(APP_DEFAULT)
            for name in ("glioma", "meningioma", "no tumour", "pituitary tumour"):
                expect(bars).to_contain_text(name)
            top = page.locator(".prob-value").first.inner_text()  # one precision: the bar's figure is the summary's
            assert re.fullmatch(r"\d+\.\d%", top) and f"({top})" in summary.inner_text()
            expect(page.locator("#original img")).to_be_visible()  # the upload itself, beside the overlay
            heat = page.locator("#heatmap img")
            expect(heat).to_be_visible()
            assert heat.evaluate("img => img.naturalWidth") > 0
            expect(key.locator(".cam-bar")).to_be_visible()  # the colour bar
            expect(key).to_contain_text(re.compile(r"drove '(glioma|meningioma|pituitary tumour)'"))  # which class it explains
            expect(key).to_contain_text(f"Heatmap from {DEFAULT_CLASSIFIER}, for the answer of {APP_DEFAULT}")  # the default: an ensemble
            assert page.locator("#upload a[download], #upload a[href*='file=']").count() == 0  # no link to a deleted file
            note = page.locator("#outline-note")  # the segmenter's outline: what it is, and how much it covers
            expect(note).to_contain_text("not a diagnosis")
            expect(note).to_contain_text(re.compile(r"covers \d+\.\d% of the image|No tumour outlined"))
            outlined = page.locator("#original img").get_attribute("src")
            page.locator("#outline-toggle input").uncheck()  # the toggle redraws the upload without the outline
            expect(page.locator("#original img")).not_to_have_attribute("src", outlined or "", timeout=10_000)
            page.locator("#outline-toggle input").check()
            expect(page.locator("#original img")).to_have_attribute("src", outlined or "", timeout=10_000)
            page.screenshot(path=str(ARTIFACTS / "desktop_classify.png"), full_page=True)

            _classify(page, sorted((data_dir / "Testing" / "notumor").glob("*.jpg"))[0], "no tumour")
            expect(key).to_contain_text("do not mark a tumour")  # a red blob over a healthy slice is not a tumour
            page.screenshot(path=str(ARTIFACTS / "desktop_no_tumour.png"), full_page=True)

            photo = tmp_path / "photo.png"
            Image.effect_mandelbrot((320, 240), (-2, -1.2, 1, 1.2), 60).convert("RGB").save(photo)
            _classify(page, photo, "unlike the brain MRI slices")  # grey, not flat: only its features flag it
            expect(page.locator("#heatmap img")).to_have_count(0)  # no heatmap over what is not a brain MRI
            expect(key).to_have_count(0)  # nor its key
            expect(page.locator("#outline-note")).to_have_count(0)  # nor an outline

            page.locator("#model input").click()
            options = page.get_by_role("option")
            expect(options.first).to_contain_text(re.compile(r"Ensemble · Lite0 \+ multi-task, averaged \(\d+\.\d%\)"))
            page.get_by_role("option", name=re.compile(r"^Simple CNN · Sequential 1: 7 layers, up to 20 epochs \(\d+\.\d%\)")).click()
            expect(summary).to_contain_text("simple_cnn_7", timeout=30_000)

            broken = image.with_name(f"{secret}-broken.png")
            broken.write_bytes(b"not an image at all")
            _classify(page, broken, "Could not classify")
            page.wait_for_timeout(11_000)  # past the toast's life: the message stays where the answer would be
            expect(summary).to_contain_text("not an image")
            expect(page.locator("#heatmap img")).to_have_count(0)
            page.screenshot(path=str(ARTIFACTS / "desktop_error.png"), full_page=True)

            _classify(page, image)
            page.get_by_role("tab", name="Compare").click()
            picker = page.locator("#compare-models")
            expect(picker).to_contain_text("Sequential 4 with 7x7 kernels")
            picker.get_by_label(re.compile("Sequential 2")).uncheck()  # a subset: one model fewer than all
            page.locator("#compare-method").get_by_label("HiResCAM").check()  # the method is chosen on the tab
            page.get_by_role("button", name="Compare", exact=True).click()
            agreement = page.locator("#agreement")
            expect(agreement).to_contain_text(" models in ", timeout=180_000)
            expect(agreement).to_contain_text(re.compile(r"the 3 best on validation, at \d+\.\d+% \(n=1311\) on official Testing"))
            figures = page.locator("#compare-grid figure")
            n_models = page.locator("#compare-models input[type=checkbox]").count()
            expect(figures).to_have_count(n_models - 1)
            expect(page.locator("#compare-table tbody tr")).to_have_count(n_models)  # every row in sight: the ensemble's, then each
            for i in range(figures.count()):  # each heatmap whole and square, its caption under it
                fig, img = figures.nth(i).bounding_box(), figures.nth(i).locator("img").bounding_box()
                assert img["width"] <= fig["width"] + 1 and abs(img["width"] - img["height"]) < 2
                expect(figures.nth(i).locator("figcaption")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "desktop_compare.png"), full_page=True)
            written = files_since(t0, gradio_cache_dir(), skip=image.parent)  # before the tabs that show dataset files

            page.get_by_role("tab", name="Classify").click()  # another image: Compare's results were of the last one
            shown = page.locator("#original img").get_attribute("src") or ""
            page.locator("#upload input[type=file]").set_input_files(str(sorted((data_dir / "Testing" / "notumor").glob("*.jpg"))[1]))
            expect(page.locator("#original img")).not_to_have_attribute("src", shown, timeout=60_000)
            page.get_by_role("tab", name="Compare").click()
            expect(agreement).to_contain_text("These results were for an earlier image")
            expect(figures).to_have_count(0)
            expect(page.locator("#compare-table")).not_to_contain_text("simple_cnn_7")  # no table at all

            page.get_by_role("tab", name="Experiments").click()
            table = page.locator("#experiments-table")
            expect(table).to_contain_text("tf_efficientnet_lite0", timeout=30_000)
            expect(table).to_contain_text("95% CI")
            expect(table).to_contain_text(re.compile(r"\d+\.\d% \(\d+\.\d-\d+\.\d\)"))  # accuracy with its interval
            assert table.locator("thead th").count() <= 10  # the compact table; the rest behind "All columns"
            for title in ("Do the heatmaps point at the tumour?", "One checkpoint's training curves", "The seed report's simple CNNs"):
                page.get_by_text(title).click()  # folded: a click away
            expect(page.locator("#localisation")).to_contain_text("peak in box")
            page.locator("#reliability").scroll_into_view_if_needed()
            expect(page.locator("#reliability img")).to_be_visible(timeout=30_000)
            expect(page.locator("#seed-table")).to_contain_text("Sequential 4 with 7x7 kernels")
            page.screenshot(path=str(ARTIFACTS / "desktop_experiments.png"), full_page=True)

            page.get_by_role("tab", name="Data").click()
            expect(page.locator("#counts")).to_contain_text("glioma", timeout=60_000)
            page.get_by_role("button", name=re.compile("duplicate audit")).click()
            audit = page.locator("#audit")
            expect(audit).to_contain_text(re.compile(r"\d+ Testing images have a near-identical copy in Training"), timeout=120_000)
            assert str(data_dir) not in page.locator("body").inner_text()  # no server path on the page
            page.screenshot(path=str(ARTIFACTS / "desktop_data.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "desktop_classify.png").stat().st_size > 10_000
    assert written == [], "the UI left files in Gradio's cache"
    roots = sorted({gradio_cache_dir(), Path(tempfile.gettempdir()).resolve()})
    assert files_containing(secret.encode(), roots, skip=image.parent) == [], "an upload outlived its request"
    assert files_named(secret, roots, skip=image.parent) == []


@pytest.mark.slow
def test_a_visitor_on_a_phone(app_url: str, secret_upload: tuple[Path, str]):
    """At 390 x 844: the answer and the heatmap in view after an upload, without scrolling; nothing wider than the screen."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    image, _ = secret_upload
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
            page.goto(app_url, wait_until="load", timeout=60000)
            expect(page.locator("#summary")).to_contain_text("Upload a brain MRI slice, or click an example")  # a hint, not a gap
            assert page.locator("#heatmap").is_hidden() and page.locator("#original").is_hidden()  # no empty boxes yet
            assert page.locator("#bars").is_hidden() and page.locator("#cam-key-box").is_hidden()  # nor a blank band
            gap = _box(page, "#method")["y"] - (_box(page, "#summary")["y"] + _box(page, "#summary")["height"])
            assert gap < 40, f"{gap:.0f} px of blank between the hint and the controls"
            cut = "[...document.querySelectorAll('#examples .caption-label')].filter(e => e.scrollWidth > e.clientWidth).length"
            assert page.evaluate(cut) == 0, "an example's caption is cut ('pituitary tu...')"
            fits = "(() => { const i = document.querySelector('#model input'); return i.scrollWidth <= i.clientWidth; })()"
            assert page.evaluate(fits), "the default's label is cut in the model list, its figure with it"
            _classify(page, image)
            expect(page.locator("#heatmap img")).to_be_visible()
            assert page.evaluate("window.scrollY") == 0
            for selector in ("#summary", "#prob-bars", "#heatmap img"):
                box = _box(page, selector)
                assert box["y"] + box["height"] <= 844, f"{selector} ends at {box['y'] + box['height']:.0f} px, below the screen"
            page.screenshot(path=str(ARTIFACTS / "phone_classify.png"))
            assert _box(page, "#examples")["width"] <= 390
            page.screenshot(path=str(ARTIFACTS / "phone_classify_full.png"), full_page=True)
            page.locator("#examples .thumbnail-item").last.click()  # far below the answer on a phone: it is scrolled to
            expect(page.locator("#summary")).to_contain_text("The dataset labels this example", timeout=60_000)
            page.wait_for_function("Math.abs(document.getElementById('summary').getBoundingClientRect().top) < 60", timeout=10_000)
            assert page.locator("#examples .thumbnail-item.selected").count() == 1
            _classify(page, image)  # an upload after it: the example no longer looks picked
            expect(page.locator("#examples .thumbnail-item.selected")).to_have_count(0)

            page.get_by_role("tab", name="Compare").click()
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.locator("#agreement")).to_contain_text(" models in ", timeout=180_000)
            for selector in ("#compare-table", "#compare-grid"):
                box = _box(page, selector)
                assert box["x"] >= 0 and box["x"] + box["width"] <= 390, f"{selector} is wider than the screen"
            assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling of the page
            wrap, name = page.locator("#compare-table .bm-table-wrap"), page.locator("#compare-table tbody th").first
            left = name.bounding_box()["x"]
            wrap.evaluate("e => e.scrollLeft = 200")
            assert wrap.evaluate("e => e.scrollLeft") > 0  # wider than a phone, the table scrolls inside its box
            assert abs(name.bounding_box()["x"] - left) < 1  # and the model's name stays on the left
            wrap.evaluate("e => e.scrollLeft = 0")
            page.screenshot(path=str(ARTIFACTS / "phone_compare.png"), full_page=True)
        finally:
            browser.close()
