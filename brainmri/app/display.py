"""What the Classify and Compare tabs show, as small HTML and Markdown pieces built from a Prediction.

Hand-written HTML because ``gr.Label`` rounds to whole percent (glioma 100%) where the summary says 99.6%: here
every probability is shown with one decimal, the same in bars, summary and table. Images travel as data URLs
(:mod:`brainmri.app.inline_media`), so nothing derived from an upload touches the disk.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

from brainmri.app.summary import summary
from brainmri.models.catalog import model_about
from brainmri.rendering import OUTLINE_COLOUR, data_url, draw_outline, overlay
from brainmri.serving import Prediction
from brainmri.vocabulary import NO_TUMOUR, class_words, percent

THUMB_SIDE = 320


def percent_cells(rows: list[dict]) -> list[dict]:
    """Table rows with every probability column ("tumour prob", "P(...)") as a percent to one decimal."""
    return [{k: percent(v) if _is_probability(k) and isinstance(v, float) else v for k, v in row.items()} for row in rows]


def _is_probability(column: str) -> bool:
    return column == "tumour prob" or column.startswith("P(")


def probability_bars(probabilities: dict[str, float]) -> str:
    """Horizontal bars, most likely first, each labelled with its probability to one decimal."""
    rows = []
    for label, p in sorted(probabilities.items(), key=lambda kv: -kv[1]):
        rows.append(
            f'<div class="prob-row"><span class="prob-name">{html.escape(class_words(label))}</span>'
            f'<span class="prob-track"><span class="prob-fill" style="width:{100 * p:.1f}%"></span></span>'
            f'<span class="prob-value">{percent(p)}</span></div>'
        )
    return '<div class="prob-bars" id="prob-bars">' + "".join(rows) + "</div>"


def _colour_stops(n: int = 6) -> list[str]:
    """The heatmap's colours at n evenly spaced values, taken from :func:`brainmri.rendering.overlay` itself."""
    ramp = np.linspace(0, 1, n, dtype=np.float32)[None, :]  # (1, n)
    colours = np.asarray(overlay(Image.new("RGB", (n, 1)), ramp, opacity=1.0))[0]
    return [f"rgb({r},{g},{b})" for r, g, b in colours]


def colour_bar(result: Prediction) -> str:
    """The heatmap's key: what it explains and how to read its colours; empty when no heatmap is drawn."""
    if result.explained_cam is None:
        return ""
    target = class_words(result.prediction or result.top_class)
    gradient = ", ".join(_colour_stops())
    if result.prediction == NO_TUMOUR:
        meaning = (
            f"The model predicts <b>no tumour</b>. The colours show the regions that drove '{target}': <b>they do not mark a tumour</b>."
        )
    else:
        meaning = f"The colours show the regions that drove <b>'{html.escape(target)}'</b> (where the model looked, not an outline)."
    if result.heatmap_by and result.heatmap_by != result.model:  # an ensemble: its classifier's heatmap, for its answer
        meaning += (
            f" Heatmap from <code>{html.escape(result.heatmap_by)}</code>, for the answer of <code>{html.escape(result.model)}</code>."
        )
    return (
        f'<div class="cam-key" id="cam-key"><div class="cam-bar" style="background:linear-gradient(to right, {gradient})"></div>'
        '<div class="cam-ends"><span>less</span><span>more influence</span></div>'
        f'<p class="cam-meaning">{meaning}</p></div>'
    )


def outline_note(result: Prediction) -> str:
    """What the green outline is, and how much of the image it covers; empty when there is no outline to speak of."""
    o = result.outline
    if o is None:
        return ""
    what = "the segmentation model's estimate of where the tumour is, not a diagnosis"
    if o.empty:
        return (
            '<p class="outline-note" id="outline-note">No tumour outlined: the segmentation model found none'
            " (its estimate, not a diagnosis).</p>"
        )
    # Side by side, a heatmap hot away from the outline reads as a fault of one or the other: say what it means.
    apart = (
        " The heatmap's brightest spot lies outside it: the heatmap shows what drove the class, which need not be the tumour itself."
        if result.explained_cam is not None and result.cam_in_tumour is False
        else ""
    )
    return (
        f'<p class="outline-note" id="outline-note"><span class="outline-swatch"></span><b>Green outline</b> (the switch'
        f" below hides it): {what}; it covers {percent(o.area)} of the image.{apart}</p>"
    )


def with_outline(image: Image.Image, mask: np.ndarray | None, show: bool) -> Image.Image:
    """The upload, with the tumour outline drawn over it when there is one and ``show`` is on."""
    return draw_outline(image, mask) if show and mask is not None and mask.any() else image


class Session(NamedTuple):
    """What a browser session keeps between events, in memory only (never a file): re-runs and redraws start here."""

    image: Image.Image  # the decoded upload
    heatmap: np.ndarray | None = None  # (H, W) in [0, 1]; None before a prediction, or over an image that is not an MRI
    mask: np.ndarray | None = None  # the tumour outline, (H, W) bool; None without one
    label: str | None = None  # an example's class in the dataset, shown beside every answer on it; None for an upload


class ClassifyView(NamedTuple):
    """What the Classify tab shows, in the order of its output components."""

    summary: str  # Markdown: the verdict, or an error that stays
    bars: str  # HTML probability bars
    image: Image.Image | None  # the decoded upload, with the tumour outline when shown
    heatmap: Image.Image | None  # the overlay; None over an image that is not a brain MRI
    key: str  # HTML colour bar and what the heatmap explains, and what the outline is
    details: dict | None  # the API's details
    session: Session | None  # kept in memory for re-runs and redraws


def classify_view(
    image: Image.Image, result: Prediction, opacity: float, show_outline: bool = True, label: str | None = None
) -> ClassifyView:
    """The Classify tab's outputs for one prediction on ``image`` (``label``: an example's class in the dataset)."""
    cam = result.explained_cam
    bars = probability_bars(result.probabilities) if result.in_distribution else ""
    heatmap = heatmap_picture(image, result, opacity)
    mask = None if result.outline is None else result.outline.mask
    shown = with_outline(image, mask, show_outline)
    key = colour_bar(result) + outline_note(result)
    verdict = summary(result) + example_note(label, result)
    return ClassifyView(verdict, bars, shown, heatmap, key, shown_details(result), Session(image, cam, mask, label))


def shown_details(result: Prediction) -> dict:
    """The API's details as the Details panel shows them: the mask's data URL (thousands of base64 characters) named,
    not printed, and the old spelling of the tumour probability left to the API."""
    details = result.details()
    details.pop("tumor_probability", None)
    if details["tumour_mask"]:
        details["tumour_mask"] = f"PNG data URL, {len(details['tumour_mask']):,} characters: the API returns it whole"
    return details


def example_note(label: str | None, result: Prediction) -> str:
    """What the dataset says an example is, under the answer on it, so a visitor can check it; a wrong answer is said
    to be wrong (the examples were not picked for right answers: the shipped ones are the first unseen Testing slices
    of each class, reports.data_summary)."""
    if label is None:
        return ""
    if result.prediction is None:
        return f"\n\nThe dataset labels this example **{class_words(label)}**."
    if result.prediction == label:
        return f"\n\nThe dataset labels this example **{class_words(label)}** too."
    return (
        f"\n\n**The dataset labels this example {class_words(label)}, so this answer is wrong.** The examples were not "
        "picked for right answers; each model's accuracy on slices with no twin in Training is in brackets in the "
        "model list."
    )


def heatmap_picture(image: Image.Image, result: Prediction, opacity: float) -> Image.Image | None:
    """The heatmap over ``image``, for the page, the API and the tool alike; None over an image the OOD check flags,
    where it would explain nothing (not the bare image, which would pass for a heatmap)."""
    cam = result.explained_cam
    return None if cam is None else overlay(image, cam, opacity)


def error_panel(message: str) -> str:
    """A readable, lasting message in the result area (a toast fades after a few seconds)."""
    return f"**Could not classify this upload.** {message}"


def compare_grid(image: Image.Image, results: Sequence[Prediction], opacity: float) -> str:
    """Each model's heatmap whole, its caption under it, in a grid that wraps to the screen's width."""
    figures = []
    for r in results:
        verdict = class_words(r.prediction) if r.prediction else r.ood_verdict_short
        shown = (heatmap_picture(image, r, opacity) or image).convert("RGB")  # a flagged image: itself, under its verdict
        shown.thumbnail((THUMB_SIDE, THUMB_SIDE))  # a grid cell is at most ~300 px wide: no need to send more
        src = data_url(shown, "jpeg")
        figures.append(
            f'<figure class="cmp-fig"><img src="{src}" alt="{html.escape(r.model)}">'
            f'<figcaption><b>{html.escape(r.model).replace("_", "_<wbr>")}</b><br><span class="cmp-about">'
            f"{html.escape(model_about(r.model))}</span><br>{html.escape(verdict)}"
            f"{'' if r.prediction is None else ' ' + percent(r.probabilities[r.top_class])}</figcaption></figure>"
        )
    return '<div class="cmp-grid" id="compare-grid">' + "".join(figures) + "</div>"


def html_table(rows: Sequence[dict], columns: Sequence[str] | None = None, caption: str = "") -> str:
    """Rows as an HTML table: every row in sight, the first column (a model's name) kept on the left while the table
    scrolls sideways in its box. Gradio's Dataframe pinned nothing, ``pinned_columns`` or not: on a phone its
    monospace names took 276 of 326 px and scrolled away with the rest. ``columns``: which, in order (default: every
    key, the first row's order first). A cell is blank for None or NaN, yes or no for a bool. No rows: "" (nothing)."""
    columns = list(dict.fromkeys(k for row in rows for k in row) if columns is None else columns)
    if not rows or not columns:
        return ""

    def cell(value: object) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):  # not measured, or nothing to say
            return ""
        if isinstance(value, (bool, np.bool_)):
            return "yes" if value else "no"
        if isinstance(value, float):  # to 4 decimals, no exponent, no trailing zeros: 75.9, 0.0054, 15000000
            return f"{value:.4f}".rstrip("0").rstrip(".")
        return html.escape(str(value))

    head = "".join(f'<th scope="col">{html.escape(str(c))}</th>' for c in columns)
    body = "".join(
        f'<tr><th scope="row">{cell(row.get(columns[0])).replace("_", "_<wbr>")}</th>'
        + "".join(f"<td>{cell(row.get(c))}</td>" for c in columns[1:])
        + "</tr>"
        for row in rows
    )
    title = f'<div class="bm-table-caption">{html.escape(caption)}</div>' if caption else ""
    return f'{title}<div class="bm-table-wrap"><table class="bm-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


ANSWER_HINT = "Upload a brain MRI slice, or click an example: its class, a heatmap of why, and the tumour's outline appear here."
PHONE_PX = 700  # at most this wide, the page is laid out for a phone (CSS below, and the scroll after an example)
# On a phone the answer is far above the examples: after a click, bring it into view (desktop shows both at once).
SCROLL_TO_ANSWER = (
    f"() => {{ if (window.innerWidth <= {PHONE_PX}) document.getElementById('summary')?.scrollIntoView({{block: 'start'}}); }}"
)

CSS = """
.prob-row { display: flex; align-items: center; gap: 8px; margin: 4px 0; }
.prob-name { width: 9.5em; flex: none; }
.prob-track { flex: 1; height: 14px; background: var(--neutral-200); border-radius: 7px; overflow: hidden; }
.prob-fill { display: block; height: 100%; background: var(--color-accent); }
.prob-value { width: 4.2em; flex: none; text-align: right; font-variant-numeric: tabular-nums; }
.cam-bar { height: 12px; border-radius: 4px; }
.cam-ends { display: flex; justify-content: space-between; font-size: 0.85em; opacity: 0.8; }
.cam-meaning { margin: 4px 0 0 0; font-size: 0.95em; }
.outline-note { margin: 6px 0 0 0; font-size: 0.95em; }
.outline-swatch { display: inline-block; width: 0.9em; height: 0.9em; border: 2px solid rgb(OUTLINE); border-radius: 2px;
  vertical-align: -0.1em; margin-right: 0.35em; }
.cmp-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(130px, 1fr)); gap: 10px; }
.cmp-fig { margin: 0; }
.cmp-fig img { width: 100%; height: auto; display: block; border-radius: 4px; }
.cmp-fig figcaption { font-size: 0.85em; line-height: 1.3; margin-top: 3px; overflow-wrap: anywhere; }
.cmp-about { opacity: 0.75; }
/* html_table's tables (Compare, Experiments): scroll sideways inside their box, the model's name stays on the left */
.bm-table-caption { font-size: 0.85em; opacity: 0.8; margin: 0 0 4px 2px; }
.bm-table-wrap { overflow-x: auto; padding: 0 !important; border: 1px solid var(--border-color-primary); border-radius: var(--radius-lg); }
.bm-table { border-collapse: separate; border-spacing: 0; width: 100%; margin: 0 !important; padding: 0 !important;
  border: none !important; font-size: 0.9em; }
.bm-table :is(th, td) { padding: 5px 10px; text-align: left; white-space: nowrap; font-variant-numeric: tabular-nums;
  font-size: 1em !important; border: none !important; border-top: 1px solid var(--border-color-primary) !important;
  background: var(--background-fill-primary); }
.bm-table thead th { font-weight: 600; vertical-align: bottom; border-top: none !important; }
#compare-table .bm-table :is(th, td):nth-child(n+3), #counts .bm-table :is(th, td):nth-child(n+2) { text-align: right; }  /* figures */
#compare-table .bm-table :is(th, td):nth-child(2) { white-space: normal; min-width: 5.5em; }
:is(#experiments-box, #gpu-runs) .bm-table td { white-space: normal; min-width: 4.5em; max-width: 15em; }  /* words wrap */
.bm-table :is(th, td):first-child { position: sticky; left: 0; z-index: 1; text-align: left; white-space: normal;
  min-width: 8em; max-width: 17em; font-weight: 600; box-shadow: 1px 0 0 var(--border-color-primary); }
#compare-table .bm-table tbody tr:first-child:not(:only-child) :is(th, td) { background: var(--background-fill-secondary); }  /* ensemble */
#upload [data-testid="upload-icon"] { display: none; }  /* the label chip covered it in a 120 px box; the words suffice */
/* the examples' box as tall as its one row, not Gradio's 450 px */
#examples, #examples .grid-wrap { height: auto !important; min-height: 0 !important; max-height: none !important; }
/* captions whole ("pituitary tumour", "normalised: -1.0 to 0.9"), not cut with an ellipsis on a phone */
:is(#examples, #samples, #steps) .caption-label { font-size: 0.75em; white-space: normal; text-overflow: clip; }
/* no picture yet (or no heatmap over a refused image): no empty boxes (on a phone, 460 px of them before the examples) */
#heatmap:not(:has(img)), #original:not(:has(img)) { display: none; }
/* nor empty bars, key and picture row: before an answer they left 100 px of blank between the hint and the controls */
#bars:not(:has(.prob-row)), #cam-key-box:not(:has(.cam-bar, .outline-note)), #pictures:not(:has(img)) { display: none; }
/* the Experiments tab's wide Markdown tables: whole words in their cells (not "glio ma"), the table scrolling sideways */
#localisation table, #seed-table table, #segmentation-table table { display: block; overflow-x: auto; }
#localisation :is(th, td), #seed-table :is(th, td), #segmentation-table :is(th, td) { word-break: normal; overflow-wrap: normal; }
@media (max-width: PHONEpx) {
  #classify-row { flex-direction: column; }
  #input-col { display: contents; }
  #input-col > * { order: 2; }  /* on a phone: the upload, then the answer, then the model and examples */
  #input-col > #upload, #input-col > *:has(#upload) { order: 0; }
  #result-col { order: 1; }
  #header h1 { font-size: 1.5em; margin-bottom: 0.2em; }
  #heatmap, #original { height: 230px !important; }
  #model input { text-overflow: ellipsis; padding-right: 1.6em; font-size: 0.85em; }  /* the whole label, its figure too */
  /* galleries wrap to three a row instead of scrolling sideways, and grow to hold every row */
  #examples .grid-container, #samples .grid-container {
    grid-template-columns: repeat(3, minmax(0, 1fr)) !important;
  }
  #steps .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }  /* 3 a row: captions hid the slice */
  #samples, #steps, #samples .grid-wrap, #steps .grid-wrap {
    height: auto !important;
    max-height: none !important;
  }
  .hide-on-phone { display: none; }
  /* Compare's 14 models: compact rows, so the Compare button is not 1,000 px down the page */
  #compare-models label { padding: 3px 8px !important; font-size: 0.85em; line-height: 1.25; }
  #compare-models .wrap { gap: 4px !important; }
  .bm-table { font-size: 0.8em; }
  .bm-table :is(th, td) { padding: 4px 6px; }
  .bm-table :is(th, td):first-child { min-width: 9.5em; max-width: 10em; }
  /* the Experiments tab's wide Markdown tables scroll sideways instead of wrapping a letter a line */
  #localisation table, #seed-table table, #segmentation-table table { white-space: nowrap; }
}
""".replace("OUTLINE", ", ".join(map(str, OUTLINE_COLOUR))).replace("PHONE", str(PHONE_PX))  # the outline drawn on the scan
