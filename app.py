"""Brain MRI tumour classifier with Grad-CAM: the Gradio app (UI wiring only; the logic is in brainmri/).

    python app.py            # honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; starts offline with HF_HUB_OFFLINE=1

API: ``/predict`` takes (image file, model name) and returns (probabilities, heatmap, details); the heatmap comes as
a PNG data URL (``brainmri.app.inline_media.decode_data_url``): nothing derived from an upload is written to disk.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import pandas as pd

from brainmri.app import comparison, dataview, experiments
from brainmri.catalog import discover, labelled_choices, unavailable_markdown
from brainmri.data import data_config
from brainmri.explain import CAM_METHODS, DEFAULT_METHOD, overlay
from brainmri.imageio import MAX_BYTES, accepted_formats, load_image
from brainmri.app.inline_media import send_inline
from brainmri.predict import Predictor
from brainmri.runtime import configure_torch_threads
from brainmri.seed_report import seed_markdown
from brainmri.app.uploads import count_pending_uploads, discard_upload, kept_in_cache, without_stray_temp_file

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
_logger = logging.getLogger("app")

DISCLAIMER = (
    "**For research and education only. Not a medical device; not for diagnosis.** "
    "A classifier trained on one public dataset of brain MRI slices cannot replace a radiologist."
)
DEFAULT_OPACITY = 0.45
SESSION_TTL_S = 600  # a session's decoded image and heatmap are dropped from memory after 10 minutes
EMPTY = (None, None, "", None, None)  # the Classify outputs, cleared

configure_torch_threads()
# Local checkpoints only at import; the Hub is asked (with a short timeout) when a page first loads.
# Requests for one model that arrive together share one forward and backward (brainmri.batching): up to
# BRAIN_MRI_MAX_BATCH of them, the first waiting at most 5 ms for the others.
MAX_BATCH = int(os.environ.get("BRAIN_MRI_MAX_BATCH", 8))
PREDICTOR = Predictor(discover(hub=False), max_batch=MAX_BATCH)
DATA = dataview.data_source()


@contextmanager
def user_errors():
    """Problems with the user's input or choice (ValueError in the package) become a clear gr.Error."""
    try:
        yield
    except ValueError as e:
        raise gr.Error(str(e), print_exception=False) from None  # not printed: the message names the upload


@functools.cache
def _hub_sources() -> dict:
    return discover(hub=True)


def model_choices() -> list[tuple[str, str]]:
    """(label, name) of every available model: family, what it is and its Testing accuracy, grouped by family."""
    return labelled_choices(PREDICTOR.sources)


def refresh_models():
    """On page load (the Hub is asked once per process): add models found on the Hub to the dropdown and the picker."""
    PREDICTOR.sources.update({n: s for n, s in _hub_sources().items() if not PREDICTOR.sources[n].available})
    choices = model_choices()
    every = gr.CheckboxGroup(choices=choices, value=[n for _, n in choices])
    return gr.Dropdown(choices=choices), unavailable_markdown(PREDICTOR.unavailable), every


# ---------------------------------------------------------------- Classify


def classify_upload(file: str | None, model_name: str | None, method: str, opacity: float):
    """UI, a new upload: decoded once and deleted from Gradio's cache at once; the decoded image lives on only in
    the session's state (memory), so a changed model or method re-runs without the file."""
    if not file:
        return EMPTY
    try:
        with user_errors():
            image = load_image(file)
    finally:
        discard_upload(file, keep=kept_in_cache(demo), pending=PENDING)
    return classify((image, None), model_name, method, opacity)


def classify(session, model_name: str | None, method: str, opacity: float):
    """UI: predict and explain the session's image; the last output keeps image and heatmap for the slider and re-runs."""
    if session is None:
        return EMPTY
    image = session[0]
    with user_errors():
        result = PREDICTOR.predict(image, model_name, method or DEFAULT_METHOD)
    cam = result.explained_cam
    return result.label_value(), overlay(image, cam, opacity), result.summary(), result.details(), (image, cam)


def reblend(session, opacity: float):
    return None if session is None else overlay(session[0], session[1], opacity)


def predict(image: str, model_name: str | None = None):
    """API: (image file, model name or empty for the default) -> (probabilities, heatmap, details)."""
    if not image:
        raise gr.Error("no image given")
    try:
        with user_errors():
            decoded = load_image(image)
            result = PREDICTOR.predict(decoded, model_name or None)
    finally:
        discard_upload(image, keep=kept_in_cache(demo), pending=PENDING)  # an API upload does not outlive its request
    return result.label_value(), overlay(decoded, result.cam, DEFAULT_OPACITY), result.details()


# ---------------------------------------------------------------- Compare


def compare(session, method: str, chosen: list[str] | None, progress=gr.Progress()):
    """The chosen models (all when none is ticked) on the session's image: a table, the heatmaps side by side,
    whether they agree, and how long it took."""
    if session is None:  # a user's slip, not a server fault: nothing for the log
        raise gr.Error("upload an image in the Classify tab first", print_exception=False)
    image = session[0]
    names = [n for n in PREDICTOR.available if n in (chosen or PREDICTOR.available)]
    start = time.perf_counter()
    with user_errors():
        results = [PREDICTOR.predict(image, name, method or DEFAULT_METHOD) for name in progress.tqdm(names, desc="models")]
    seconds = time.perf_counter() - start
    gallery = [(overlay(image, r.explained_cam, DEFAULT_OPACITY), f"{r.model}: {comparison.verdict(r)}") for r in results]
    summary = f"{comparison.agreement(results)}\n\n{len(results)} models in {seconds:.1f} s. {comparison.scored_ensemble_note()}"
    return pd.DataFrame(comparison.comparison_rows(results)).round(4), gallery, summary


# ---------------------------------------------------------------- Experiments


def experiments_view():
    rows = experiments.experiment_table()
    table = pd.DataFrame(rows, columns=experiments.COLUMNS)
    sweep = experiments.results_table()
    sweep_md = (
        "No `results/experiments.csv` yet (the GPU sweep writes it)." if sweep is None else f"`results/experiments.csv`: {len(sweep)} runs."
    )
    names = [r["model"] for r in rows]
    sweep_table = gr.Dataframe(pd.DataFrame(sweep or []), visible=sweep is not None)
    return table, sweep_table, sweep_md, gr.Dropdown(choices=names, value=names[0] if names else None), seed_markdown()


def experiment_figures(name: str | None):
    if not name:
        return None, None, None, None
    folder = experiments.CHECKPOINT_DIR / name
    figures = [experiments.figure(folder, f) for f in ("curves.png", "confusion.png", "reliability.png")]
    return *figures, pd.DataFrame(experiments.history(folder))


# ---------------------------------------------------------------- Data


def data_view(model_name: str | None):
    root = dataview.local_root(DATA)
    if root is None:
        return f"No data folder at `{DATA}` (set `BRAIN_MRI_DATA`).", None, None, None
    counts = pd.DataFrame(dataview.class_counts(root))
    samples = [(load_image(p), c) for p, c in dataview.example_files(root, per_class=2, split="train")]
    first = dataview.widest_example(root)
    with user_errors():
        cfg = data_config(PREDICTOR.model(model_name).model)
        steps = dataview.preprocessing_steps(load_image(first), cfg)
    note = f"Data: `{root}`. Preprocessing of `{Path(first).name}` for **{model_name or PREDICTOR.default_model}**, step by step:"
    return note, counts, samples, steps


def audit_view():
    with user_errors():
        return dataview.audit_summary(DATA)


# ---------------------------------------------------------------- layout


@functools.cache
def examples() -> list[tuple[str, str]]:
    """Example images, one Testing slice per class, as (path, class); fetched once (brainmri.app.dataview.example_images)."""
    return dataview.example_images(DATA)


def show_examples():  # on page load: a Hub dataset is fetched then, not at import
    return gr.Gallery([p for p, _ in examples()], visible=bool(examples()))


def classify_example(model_name: str | None, method: str, opacity: float, evt: gr.SelectData):
    """UI, an example clicked: shown in the upload box (not an upload: never deleted) and classified."""
    path = examples()[evt.index][0]
    return path, *classify((load_image(path), None), model_name, method, opacity)


def build_demo() -> gr.Blocks:
    local = examples() if dataview.local_root(DATA) is not None else []
    # Uploads are deleted once decoded and heatmaps never touch the disk (brainmri.app.inline_media); the sweep is a backstop
    # for anything else in Gradio's cache (example copies, figures): older than 10 minutes, checked every 10 minutes.
    with gr.Blocks(title="Brain MRI tumour classifier", delete_cache=(600, 600)) as demo:
        gr.Markdown("# Brain MRI tumour classifier\nGlioma, meningioma, pituitary tumour or no tumour, with Grad-CAM.\n\n" + DISCLAIMER)
        session = gr.State(None, time_to_live=SESSION_TTL_S)  # (decoded image, heatmap): memory only, never a file
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column(scale=2):
                    upload = without_stray_temp_file(gr.File(label=f"MRI slice: {accepted_formats()}", type="filepath", elem_id="upload"))
                    model = gr.Dropdown(model_choices(), value=PREDICTOR.default_model, label="Model", elem_id="model")
                    unavailable = gr.Markdown(unavailable_markdown(PREDICTOR.unavailable))
                    method = gr.Radio(list(CAM_METHODS), value=DEFAULT_METHOD, label="Explanation method")
                    opacity = gr.Slider(0, 1, value=DEFAULT_OPACITY, step=0.05, label="Heatmap opacity")
                    examples_shown = dict(label="Examples (click one)", columns=4, height=160, allow_preview=False, elem_id="examples")
                    gallery = gr.Gallery([p for p, _ in local], visible=bool(local), **examples_shown)
                with gr.Column(scale=3):
                    heatmap = gr.Image(label="Heatmap", type="pil", format="png", elem_id="heatmap", interactive=False, height=420)
                    send_inline(heatmap)
                    summary = gr.Markdown(elem_id="summary")
                    label = gr.Label(num_top_classes=4, label="Probabilities", elem_id="probabilities")
                    with gr.Accordion("Details (JSON)", open=False):
                        details = gr.JSON(label="Details", elem_id="details-json")
            outputs = [label, heatmap, summary, details, session]
            # A user's upload (not a value set by the app) first clears the old answer, so a bad file never leaves it up.
            upload.upload(lambda: EMPTY, None, outputs, api_visibility="private", show_progress="hidden").then(
                classify_upload, [upload, model, method, opacity], outputs, api_visibility="private"
            )
            upload.clear(lambda: EMPTY, None, outputs, api_visibility="private", show_progress="hidden")
            gallery.select(classify_example, [model, method, opacity], [upload, *outputs], api_visibility="private")
            for trigger in (model.change, method.change):
                trigger(classify, [session, model, method, opacity], outputs, api_visibility="private")
            opacity.change(
                reblend, [session, opacity], heatmap, api_visibility="private", show_progress="hidden", trigger_mode="always_last"
            )
            # The API endpoint: its own (hidden) model-name box, so a client may name any model or none.
            api_model = gr.Textbox(value=PREDICTOR.default_model or "", visible=False)
            gr.Button(visible=False).click(predict, [upload, api_model], [label, heatmap, details], api_name="predict")

        with gr.Tab("Compare"):
            gr.Markdown("Runs the ticked models on the image uploaded in **Classify**.")
            every = [n for _, n in model_choices()]
            picked = gr.CheckboxGroup(model_choices(), value=every, label="Models to compare", elem_id="compare-models")
            compare_button = gr.Button("Compare", variant="primary")
            agreement = gr.Markdown(elem_id="agreement")
            compare_table = gr.Dataframe(label="Per model")
            compare_gallery = send_inline(gr.Gallery(label="Heatmaps side by side", columns=4, height="auto", object_fit="contain"))
            compare_button.click(compare, [session, method, picked], [compare_table, compare_gallery, agreement], api_visibility="private")

        with gr.Tab("Experiments") as experiments_tab:
            gr.Markdown(experiments.ABOUT)
            exp_table = gr.Dataframe(label="Experiments", wrap=True, elem_id="experiments-table")
            sweep_md = gr.Markdown()
            sweep_table = gr.Dataframe(label="GPU sweep (results/experiments.csv)", visible=False)
            exp_model = gr.Dropdown(label="Checkpoint")
            with gr.Row():
                curves = gr.Image(label="Training curves", type="filepath", interactive=False)
                confusion = gr.Image(label="Confusion matrix (Testing)", type="filepath", interactive=False)
                reliability = gr.Image(label="Reliability, near-dedup Testing", type="filepath", interactive=False, elem_id="reliability")
            hist = gr.Dataframe(label="history.csv")
            with gr.Accordion("The seed report's simple CNNs, reproduced", open=True):
                seed_md = gr.Markdown(elem_id="seed-table")
            experiments_tab.select(experiments_view, None, [exp_table, sweep_table, sweep_md, exp_model, seed_md], api_visibility="private")
            exp_model.change(experiment_figures, exp_model, [curves, confusion, reliability, hist], api_visibility="private")

        with gr.Tab("Data") as data_tab:
            data_note = gr.Markdown("Open this tab to read the data folder.")
            counts = gr.Dataframe(label="Images per class and split", elem_id="counts")
            samples = gr.Gallery(label="Samples per class (Training)", columns=8, height=200)
            steps = gr.Gallery(label="Preprocessing, step by step", columns=5, height=260)
            audit_button = gr.Button("Run the duplicate audit (10-30 s, then cached)")
            audit = gr.JSON(label="Duplicate audit")
            data_tab.select(data_view, model, [data_note, counts, samples, steps], api_visibility="private")
            audit_button.click(audit_view, None, audit, api_visibility="private")

        gr.Markdown(DISCLAIMER)
        demo.load(refresh_models, None, [model, unavailable, picked], api_visibility="private")
        if not local:
            demo.load(show_examples, None, gallery, api_visibility="private")
    return demo


demo = build_demo()
PENDING = count_pending_uploads(demo)  # identical uploads share a path: the last request with those bytes deletes it
# max_size bounds the queue (and memory): the 65th waiting request is refused. As many requests run at a time as
# can share a batch (scripts/load_test.py --concurrency-limit 2 8 measures it); GRADIO_DEFAULT_CONCURRENCY_LIMIT overrides.
demo.queue(max_size=64, default_concurrency_limit=int(os.environ.get("GRADIO_DEFAULT_CONCURRENCY_LIMIT", MAX_BATCH)))

if __name__ == "__main__":
    # server_name / server_port default to GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.
    demo.launch(max_file_size=MAX_BYTES)
