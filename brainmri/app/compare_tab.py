"""The Compare tab's wiring (moved out of app.py): the ticked models on the image in Classify, each with its heatmap.

Its results are of one image: when Classify's image changes (an upload, an example), opening the tab clears them
and says so, rather than show one image's answers beside another's. The logic is in :mod:`brainmri.app.comparison`.
"""

from __future__ import annotations

import functools
import time

import gradio as gr
from PIL import Image

from brainmri.app import comparison, display
from brainmri.app.errors import user_errors
from brainmri.data.imageio import pixel_key
from brainmri.explain import CAM_METHODS, DEFAULT_METHOD
from brainmri.models.catalog import label_score, labelled_choices
from brainmri.rendering import DEFAULT_OPACITY
from brainmri.serving import Prediction, Predictor


def no_comparison(message: str) -> tuple[str, str, str, None]:
    """Compare's outputs with no results: no table, no heatmaps, ``message``."""
    return "", "", message, None


def steady_prediction(predictor: Predictor, warmed: set[tuple[str, str]], image: Image.Image, name: str, method: str) -> Prediction:
    """``name``'s answer on ``image``, its latency that of a pass after its first.

    A model's first pass with a method pays its warm-up (oneDNN's and ONNX Runtime's kernels chosen for its shapes):
    0.8-1.1 s for Lite1 and Lite2 in the browser test, where a later pass took 115-129 ms, so the latency column would
    compare warm-ups. ``warmed``: the (model, method) pairs run before in this process, each warmed once, untimed;
    the same pixels give the same answer, so only the time differs. Kept by name: a model evicted from the cache
    (``BRAIN_MRI_MODEL_CACHE_MB``) and loaded again pays its warm-up in a timed pass."""
    if (name, method) not in warmed:
        predictor.predict(image, name, method, outline=False)
        warmed.add((name, method))
    return predictor.predict(image, name, method, outline=False)


def compare(
    predictor: Predictor,
    warmed: set[tuple[str, str]],
    session: display.Session | None,
    method: str,
    chosen: list[str] | None,
    progress: gr.Progress = gr.Progress(),
) -> tuple[str, str, str, str | None]:
    """The ticked models (all when none is) on the session's image: table, heatmaps, agreement and time taken, and
    which image they ran on (:func:`brainmri.data.imageio.pixel_key`). ``warmed``: see :func:`steady_prediction`."""
    if session is None:  # a user's slip, not a server fault: said where the answer goes (a toast fades), not logged
        return no_comparison(comparison.NOTHING_TO_COMPARE)  # a session expires too
    image = session.image
    listed = [n for _, n in labelled_choices(predictor.sources, ensembles=False)]  # the picker's order, rows and heatmaps
    names = [n for n in listed if n in (chosen or listed)]
    method = method or DEFAULT_METHOD
    new = sum((n, method) not in warmed for n in names)  # counted here: another visitor's Compare may warm some meanwhile
    start = time.perf_counter()
    with user_errors():
        results = [steady_prediction(predictor, warmed, image, n, method) for n in progress.tqdm(names, desc="models")]
    seconds = time.perf_counter() - start
    warm_ups = f" ({new} of them run once first to warm up, a pass the latency column leaves out)" if new else ""
    summary = f"{comparison.agreement(results)}\n\n{len(results)} models in {seconds:.1f} s{warm_ups}. {comparison.scored_ensemble_note()}"
    table = display.html_table(display.percent_cells(comparison.comparison_rows(results)), caption="Per model (probabilities in %)")
    return table, display.compare_grid(image, results, DEFAULT_OPACITY), summary, pixel_key(image)


def forget_stale(session: display.Session | None, compared: str | None) -> tuple:
    """The tab opened: results of another image than Classify's now are cleared, and the tab says so."""
    message = comparison.stale_message(session and session.image, compared)
    return (gr.skip(),) * 4 if message is None else no_comparison(message)


def build_tab(tab: gr.Tab, session: gr.State, predictor: Predictor) -> gr.CheckboxGroup:
    """The tab's components and events; returns the model picker, which the page's load refreshes from the Hub."""
    gr.Markdown("Runs the ticked models on the image uploaded in **Classify**, each with its own heatmap.")
    choices = labelled_choices(predictor.sources, ensembles=False)
    score = label_score(predictor.sources)
    picked = gr.CheckboxGroup(choices, value=[n for _, n in choices], label="Models to compare", info=score, elem_id="compare-models")
    method = gr.Radio(list(CAM_METHODS), value=DEFAULT_METHOD, label="Explanation method", elem_id="compare-method")
    button = gr.Button("Compare", variant="primary")
    agreement = gr.Markdown(elem_id="agreement")
    table = gr.HTML(elem_id="compare-table")
    grid = gr.HTML(elem_id="compare-heatmaps")
    compared = gr.State(None)  # pixel_key of the image the results are of; no TTL: expiring first, it hid stale ones
    outputs = [table, grid, agreement, compared]
    warmed: set[tuple[str, str]] = set()  # (model, method) pairs that have paid their first pass's warm-up
    button.click(functools.partial(compare, predictor, warmed), [session, method, picked], outputs, api_visibility="private")
    tab.select(forget_stale, [session, compared], outputs, api_visibility="private")
    return picked
