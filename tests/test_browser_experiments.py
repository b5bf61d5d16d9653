"""The Experiments tab in a real browser, at desktop and phone size: the pictures that compare the models first,
then the table of shipped checkpoints, and the longer tables folded (the cut-short sweep runs apart). Screenshots in
tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, chromium  # noqa: F401  (the fixture that checks Chromium)


def _open_experiments(page, url: str) -> None:
    page.goto(url, wait_until="load", timeout=60000)
    page.get_by_role("tab", name="Experiments").click()
    expect(page.locator("#experiments-table")).to_contain_text("unseen test acc", timeout=30_000)
    for selector in ("#accuracy-cost img", "#accuracy-params img", "#per-class img"):
        picture = page.locator(selector)
        expect(picture).to_be_visible(timeout=30_000)
        assert picture.evaluate("img => img.complete && img.naturalWidth") > 600, f"{selector} did not load"


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1400, 1000), (390, 844)], ids=["desktop", "phone"])
def test_the_experiments_tab_shows_the_pictures_first(app_url: str, size: tuple[int, int]):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    width, height = size
    name = "desktop" if width > 1000 else "phone"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            phone = {"is_mobile": True, "has_touch": True} if name == "phone" else {}
            page = browser.new_page(viewport={"width": width, "height": height}, **phone)
            _open_experiments(page, app_url)
            cost, table = page.locator("#accuracy-cost img").bounding_box(), page.locator("#experiments-table").bounding_box()
            assert cost["y"] < table["y"], "the accuracy-against-cost picture comes before the tables"
            assert cost["x"] >= 0 and cost["x"] + cost["width"] <= width + 1, "the picture is wider than the screen"
            size = page.locator("#accuracy-params img").bounding_box()
            if name == "desktop":  # side by side, each readable without opening it full screen
                assert abs(cost["y"] - size["y"]) < 2 and cost["width"] > 550
            else:  # one under the other, each the screen's width
                assert size["y"] >= cost["y"] + cost["height"] - 1 and cost["width"] > 300
            # Folded, each a click away: the tab opens on the pictures and the shipped table (2,700 px against 6,900).
            assert page.evaluate("document.documentElement.scrollHeight") < 4000, "the Experiments tab unfolded"
            for title in ("Sweep runs: on the GPU", "Where the tumour is:", "Do the heatmaps point at the tumour?"):
                page.get_by_text(title).click()
            expect(page.locator("#sweep-runs")).to_contain_text("cpu_effnet_seed")  # B0 under the seed's protocol, on CPU
            short = page.locator("#cut-short")
            expect(short).to_contain_text("Cut short by their time budget")
            expect(short).to_contain_text("efficientnet_b7")  # the 2-epoch run, apart from the finished ones
            page.locator("#accuracy-cost").screenshot(path=str(ARTIFACTS / f"{name}_accuracy_cost.png"))
            page.locator("#accuracy-params").screenshot(path=str(ARTIFACTS / f"{name}_accuracy_params.png"))
            page.locator("#per-class").screenshot(path=str(ARTIFACTS / f"{name}_per_class.png"))
            outline = page.locator("#segmentation-table")  # the U-Net's table, then the one encoder's beside both experts
            expect(outline).to_contain_text("One encoder for class, heatmap and outline")
            expect(outline).to_contain_text("experts vs each other")
            outline.screenshot(path=str(ARTIFACTS / f"{name}_outline_tables.png"))
            cells = page.locator("#localisation td")  # the pointing game's table: each cell a line, however narrow the screen
            expect(page.locator("#localisation")).to_contain_text("Peak in box: the share of slices whose heatmap peaks inside")
            heights = cells.evaluate_all("cells => cells.map(c => c.getBoundingClientRect().height)")
            assert heights, "the pointing game's table has no cells"
            assert max(heights) < 80, f"a table cell wraps onto many lines ({max(heights):.0f} px high)"  # one line: ~40
            page.locator("#localisation").screenshot(path=str(ARTIFACTS / f"{name}_localisation_table.png"))
            page.screenshot(path=str(ARTIFACTS / f"{name}_experiments_pictures.png"), full_page=True)
            assert page.evaluate("document.documentElement.scrollWidth") <= width + 1  # no sideways scrolling of the page
        finally:
            browser.close()
