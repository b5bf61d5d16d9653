"""Brain MRI tumour classifier with heatmaps (LayerCAM, Grad-CAM): the Gradio app (UI wiring only; the logic is in brainmri/).

    python app.py            # honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; starts offline with HF_HUB_OFFLINE=1

API: ``/predict`` takes (image file, model name) and returns (probabilities, heatmap, details); the heatmap comes as
a PNG data URL (``brainmri.app.inline_media.decode_data_url``): nothing derived from an upload is written to disk.
``/analyse_slice`` is the tool assistants call through the MCP server at /gradio_api/mcp/ (brainmri.app.tool): compact
JSON; ``/predict`` stays on the API page but is no MCP tool.
"""

from __future__ import annotations

# ZeroGPU: `spaces` first, before anything imports torch: it patches torch's CUDA as it loads (tests/test_space_stack.py).
try:
    import spaces  # noqa: F401
except ImportError:  # optional off ZeroGPU: brainmri.serving.zerogpu then runs the plain functions
    spaces = None

import functools
import logging

import gradio as gr
from PIL import Image

from brainmri.app import compare_tab, dataview, display, experiments, gradio_costs, tool
from brainmri.app.errors import NO_IMAGE, user_error, user_errors
from brainmri.app.inline_media import send_inline
from brainmri.app.uploads import api_file_input, count_pending_uploads, discard_upload, kept_in_cache, without_stray_temp_file
from brainmri.cli import setup_logging
from brainmri.data.imageio import MAX_BYTES, accepted_formats, load_image
from brainmri.explain import CAM_METHODS, DEFAULT_METHOD
from brainmri.models.catalog import discover, discover_segmenter, label_score, labelled_choices, unavailable_markdown
from brainmri.rendering import DEFAULT_OPACITY, overlay
from brainmri.runtime import available_cpus, configure_torch_threads, describe_cpu
from brainmri.serving import Predictor
from brainmri.settings import batch_workers, concurrency_limit, default_data, hub_offline, max_batch, session_capacity
from brainmri.vocabulary import CLASSES_IN_WORDS

setup_logging()
_logger = logging.getLogger(__name__)

DISCLAIMER = (
    "**For research and education only. Not a medical device; not for diagnosis.** "
    "A classifier trained on one public dataset of brain MRI slices cannot replace a radiologist."
)
SESSION_TTL_S = 600  # a session's decoded image and heatmap are dropped from memory after 10 minutes
EMPTY = display.ClassifyView(display.ANSWER_HINT, "", None, None, "", None, None)  # the Classify outputs, cleared

configure_torch_threads(batch_workers())
# Local checkpoints at import (offline, the Hub cache too); the Hub is asked on a page's first load. Requests arriving
# together share one forward and backward (brainmri.serving.batching), BRAIN_MRI_MAX_BATCH at most; BRAIN_MRI_WORKERS at once.
PREDICTOR = Predictor(discover(hub=hub_offline()), max_batch=max_batch(), workers=batch_workers(), segmenter=discover_segmenter(hub=False))
DATA = default_data()


@functools.cache
def _hub_sources() -> dict:
    return discover(hub=True)


_hub_segmenter = functools.cache(discover_segmenter)  # the Hub asked once per process, as for the classifiers


def refresh_models() -> tuple[gr.Dropdown, str, gr.CheckboxGroup]:
    """On page load (the Hub is asked once per process): add models found on the Hub to the dropdown and the picker,
    and the segmenter when it has no local folder."""
    PREDICTOR.add_sources(_hub_sources())
    if PREDICTOR.segmenter_source is not None and not PREDICTOR.segmenter_source.available:
        PREDICTOR.use_segmenter(_hub_segmenter(PREDICTOR.segmenter_source.name))
    singles = labelled_choices(PREDICTOR.sources, ensembles=False)
    every = gr.CheckboxGroup(choices=singles, value=[n for _, n in singles])
    return gr.Dropdown(choices=labelled_choices(PREDICTOR.sources)), unavailable_markdown(PREDICTOR.unavailable), every


# ---------------------------------------------------------------- Classify


def classify_upload(file: str | None, model_name: str | None, method: str, opacity: float, show_outline: bool = True) -> tuple:
    """UI, a new upload: decoded once, deleted from Gradio's cache at once, and the upload box emptied for the next
    one; the decoded image lives on only in the session's state (memory), so a changed model re-runs without it."""
    if not file:
        return None, *EMPTY
    try:
        image = load_image(file)
    except ValueError as e:  # shown where the answer would be, and kept there (a toast fades)
        return None, display.error_panel(str(e)), *EMPTY[1:]
    finally:
        discard_upload(file, keep=kept_in_cache(demo), pending=PENDING)
    return None, *classify(display.Session(image), model_name, method, opacity, show_outline)


def classify(
    session: display.Session | None, model_name: str | None, method: str, opacity: float, show_outline: bool = True
) -> display.ClassifyView:
    """UI: predict and explain the session's image (display.ClassifyView: what the Classify tab shows)."""
    if session is None:
        return EMPTY
    image = session.image
    with user_errors():
        result = PREDICTOR.predict(image, model_name, method or DEFAULT_METHOD)
    return display.classify_view(image, result, opacity, show_outline, session.label)


def reblend(session: display.Session | None, opacity: float) -> Image.Image | None:
    return None if session is None or session.heatmap is None else overlay(session.image, session.heatmap, opacity)


def redraw_outline(session: display.Session | None, show: bool) -> Image.Image | None:
    """UI, the outline toggled: the session's image redrawn, with or without it; nothing is re-run."""
    return None if session is None else display.with_outline(session.image, session.mask, show)


def predict(image: str, model_name: str | None = None) -> tuple[dict[str, float] | str, Image.Image | None, dict]:
    """API: (image file, model name or empty for the default) -> (probabilities, heatmap, details)."""
    if not image:
        raise user_error(NO_IMAGE)
    try:
        with user_errors():
            decoded = load_image(image)
            result = PREDICTOR.predict(decoded, PREDICTOR.resolve(model_name))  # a name, or the label the list shows
    finally:
        discard_upload(image, keep=kept_in_cache(demo), pending=PENDING)  # an API upload does not outlive its request
    return result.label_value(), display.heatmap_picture(decoded, result, DEFAULT_OPACITY), result.details()


ANALYSE = tool.analyse_tool(PREDICTOR, DISCLAIMER, keep=lambda: kept_in_cache(demo), pending=lambda: PENDING)


@functools.cache
def examples() -> list[tuple[str, str]]:
    """Example images as (path, class): a Testing slice per class, else the shipped examples/; fetched once (dataview)."""
    return dataview.example_images(DATA)


def show_examples() -> gr.Gallery:  # on page load: a Hub dataset is fetched then, not at import
    return gr.Gallery(dataview.captioned(examples()), visible=bool(examples()))


def classify_example(model_name: str | None, method: str, opacity: float, show_outline: bool, evt: gr.SelectData) -> display.ClassifyView:
    """UI, an example clicked: classified like an upload (an example is not an upload: never deleted)."""
    path, label = examples()[evt.index]
    return classify(display.Session(load_image(path), label=label), model_name, method, opacity, show_outline)


def classify_tab(session: gr.State) -> tuple[gr.Dropdown, gr.Gallery]:
    local = examples() if dataview.examples_are_local(DATA) else []
    choices = labelled_choices(PREDICTOR.sources)
    with gr.Row(elem_id="classify-row"):
        with gr.Column(scale=2, elem_id="input-col"):
            upload = gr.File(label=f"MRI slice: {accepted_formats(detailed=False)}", type="filepath", elem_id="upload", height=120)
            upload = without_stray_temp_file(upload)
            model = gr.Dropdown(choices, value=PREDICTOR.default_model, label="Model", info=label_score(PREDICTOR.sources), elem_id="model")
            shown = dict(label="Examples (click one)", columns=4, height="auto", allow_preview=False, elem_id="examples")
            gallery = gr.Gallery(dataview.captioned(local), visible=bool(local), **shown)
        with gr.Column(scale=3, elem_id="result-col"):
            summary = gr.Markdown(display.ANSWER_HINT, elem_id="summary")
            bars = gr.HTML(elem_id="bars")
            with gr.Row(elem_id="pictures"):  # side by side on a phone too: the heatmap first, where the eye lands
                image = dict(type="pil", format="png", interactive=False, height=300, min_width=120)
                heatmap = send_inline(gr.Image(label="Heatmap", elem_id="heatmap", buttons=["fullscreen"], **image))
                original = send_inline(gr.Image(label="Your image", elem_id="original", buttons=[], **image))
            key = gr.HTML(elem_id="cam-key-box")
            method = gr.Radio(list(CAM_METHODS), value=DEFAULT_METHOD, label="Explanation method", elem_id="method")
            opacity = gr.Slider(0, 1, value=DEFAULT_OPACITY, step=0.05, label="Heatmap opacity")
            show_outline = gr.Checkbox(True, label="Tumour outline on your image", elem_id="outline-toggle")
            with gr.Accordion("Details (JSON)", open=False):
                details = gr.JSON(label="Details", elem_id="details-json")
    outputs = [summary, bars, original, heatmap, key, details, session]
    # A user's upload first clears the old answer, so a bad file never leaves it up.
    cleared = (lambda: (*EMPTY, gr.Gallery(selected_index=None)), None, [*outputs, gallery])  # no example stays picked
    upload.upload(*cleared, api_visibility="private", show_progress="hidden").then(
        classify_upload, [upload, model, method, opacity, show_outline], [upload, *outputs], api_visibility="private"
    )
    picked = gallery.select(classify_example, [model, method, opacity, show_outline], outputs, api_visibility="private")
    picked.then(None, js=display.SCROLL_TO_ANSWER, api_visibility="private")
    for trigger in (model.change, method.change):
        trigger(classify, [session, model, method, opacity, show_outline], outputs, api_visibility="private")
    show_outline.change(redraw_outline, [session, show_outline], original, api_visibility="private", show_progress="hidden")
    opacity.change(reblend, [session, opacity], heatmap, api_visibility="private", show_progress="hidden", trigger_mode="always_last")
    # The API endpoint: its own hidden inputs and probabilities, so a client may name any model or none.
    api_image, api_model = api_file_input(lambda: PENDING), gr.Textbox(value=PREDICTOR.default_model or "", visible=False)
    api_label = gr.Label(label="probabilities", visible=False)  # named, as the API page lists outputs by label
    about = tool.predict_description(PREDICTOR.default_model, PREDICTOR.available)  # the API page's words, not Gradio's
    gr.Button(visible=False).click(
        tool.not_an_mcp_tool(predict), [api_image, api_model], [api_label, heatmap, details], api_name="predict", api_description=about
    )
    tool_in = [api_file_input(lambda: PENDING), gr.Textbox(visible=False), gr.Checkbox(False, visible=False)]
    gr.Button(visible=False).click(ANALYSE, tool_in, gr.Textbox(label="analysis", visible=False), api_name="analyse_slice")  # the MCP tool
    return model, gallery


# ---------------------------------------------------------------- Data


def data_view(model_name: str | None) -> tuple:
    with user_errors():
        view = dataview.overview(DATA, (loaded := PREDICTOR.model(model_name)).model, loaded.name)  # an ensemble's: its classifier's
    counts = None if view.counts is None else display.html_table(view.counts, caption="Images per class and split")
    return view.note, counts, view.samples, view.steps, view.words


def audit_view() -> str:
    with user_errors():
        return dataview.audit_text(DATA)  # precomputed (results/) when there is no data folder


def data_tab(tab: gr.Tab, model: gr.Dropdown) -> None:
    note = gr.Markdown("Open this tab to read the data folder.")
    counts = gr.HTML(elem_id="counts")
    samples = gr.Gallery(label="Samples per class (Training)", columns=8, height=220, elem_id="samples")
    with gr.Row():  # beside the words, a tile is about as wide as the gallery is high: the slice whole
        steps = gr.Gallery(label="Preprocessing", columns=4, height=310, object_fit="contain", elem_id="steps", scale=3, min_width=320)
        words = gr.Markdown(elem_id="steps-words", scale=2, min_width=240)  # on a phone, under the pictures
    button = gr.Button("Run the duplicate audit (once, then cached)" if dataview.local_root(DATA) else "Show the duplicate audit")
    audit = gr.Markdown(elem_id="audit")
    tab.select(data_view, model, [note, counts, samples, steps, words], api_visibility="private")
    button.click(audit_view, None, audit, api_visibility="private")


# ---------------------------------------------------------------- layout


def build_demo() -> gr.Blocks:
    # Uploads are deleted once decoded and heatmaps never touch the disk (brainmri.app.inline_media); the sweep is a
    # backstop for anything else in Gradio's cache (example copies, figures): older than 10 minutes, every 10 minutes.
    with gr.Blocks(title="Brain MRI tumour classifier", delete_cache=(SESSION_TTL_S, SESSION_TTL_S)) as demo:
        gr.Markdown(
            f"# Brain MRI tumour classifier\n{CLASSES_IN_WORDS.capitalize()}, with a heatmap of what drove each answer. " + DISCLAIMER,
            elem_id="header",
        )
        session = gr.State(None, time_to_live=SESSION_TTL_S)  # a display.Session: memory only, never a file
        with gr.Tab("Classify"):
            model, gallery = classify_tab(session)
        with gr.Tab("Compare") as tab:
            picked = compare_tab.build_tab(tab, session, PREDICTOR)
        with gr.Tab("Experiments") as tab:
            experiments.build_tab(tab)
            unavailable = gr.Markdown(unavailable_markdown(PREDICTOR.unavailable), elem_id="unavailable")  # not under the menu
        with gr.Tab("Data") as tab:
            data_tab(tab, model)
        gr.Markdown(DISCLAIMER)
        demo.load(refresh_models, None, [model, unavailable, picked], api_visibility="private")
        if not dataview.examples_are_local(DATA):  # a Hub dataset's: fetched on page load, not at import
            demo.load(show_examples, None, gallery, api_visibility="private")
    return demo


demo = build_demo()
PENDING = count_pending_uploads(demo)  # identical uploads share a path: the last request with those bytes deletes it
# max_size bounds the queue (and memory): the 65th waiting request is refused. How many run at once: settings.concurrency_limit.
gradio_costs.bound_gradio_bookkeeping()  # what Gradio does per request and this app never reads: lazy, bounded or not kept
demo.queue(max_size=64, default_concurrency_limit=concurrency_limit())


def log_host() -> None:  # the host sets the speed (docs/serving.md): a Space's log names it as the speed scripts do
    _logger.info("serving %s on %s, %d usable cores", PREDICTOR.default_model, describe_cpu(), available_cpus())


def launch(prevent_thread_lock: bool = False, **kwargs) -> tuple:
    """Serve the app and its MCP server (style sheet, upload limit, models loaded); server_name / port default to
    GRADIO_SERVER_*. The MCP tool's staged copies of images are tracked before the first request (brainmri.app.tool)."""
    PREDICTOR.warm()  # the first visitor does not wait for the default model to load
    log_host()
    options = dict(css=display.CSS, max_file_size=MAX_BYTES, mcp_server=True, state_session_capacity=session_capacity())  # sessions: memory
    served = demo.launch(prevent_thread_lock=True, **options, **kwargs)
    tool.track_mcp_staging(demo)
    if not prevent_thread_lock:
        demo.block_thread()
    return served


if __name__ == "__main__":
    launch()
