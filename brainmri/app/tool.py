"""The app's tool for assistants: one slice in, compact JSON out, over the API and Gradio's MCP server.

``launch(mcp_server=True)`` serves every public endpoint as an MCP tool, described by its function's docstring
and type hints. ``/predict`` answers with a Gradio label, a heatmap as a base64 PNG and the full details, which
suits a page but not an assistant; ``analyse_slice`` answers with the class and its probabilities, the OOD
verdict, the tumour's box and area, the model and the disclaimer, and adds pictures only when asked.

An MCP client may send the image as a ``data:`` URL, which Gradio's MCP server writes into its cache before it
uploads it to the app, a copy Gradio never deletes. :func:`track_mcp_staging` records those copies, and the tool
deletes the one with its upload's bytes once decoded, as it deletes the upload itself (brainmri.app.uploads); the
last of several requests with the same bytes deletes it. A copy whose request never ran (refused as too large, a
full queue, a client gone) is in Gradio's cache sweep, which deletes it with the other stale uploads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import gradio as gr
from PIL import Image

from brainmri.app.display import heatmap_picture
from brainmri.app.errors import NO_IMAGE, user_error, user_errors
from brainmri.app.summary import disagreement
from brainmri.app.uploads import PendingUploads, discard_upload, gradio_cache_dir
from brainmri.data.imageio import accepted_formats, load_image
from brainmri.rendering import DEFAULT_OPACITY, data_url
from brainmri.segmentation import mask_data_url
from brainmri.serving import Prediction, Predictor
from brainmri.vocabulary import CLASSES_IN_WORDS, class_words

_STAGED = PendingUploads()  # the MCP server's copies of data: URL images, until their requests have read them
DATA_URL = "the data: URL"  # how messages name an image sent as one ("the data: URL is not an image this app can read")


def load_image_named(path: str, shown: str | None) -> Image.Image:
    """:func:`load_image`, its errors naming the image ``shown`` (a staged copy's "file.dcm" as "the data: URL") while
    the file's own suffix still tells its format (a DICOM without its preamble is known by ".dcm")."""
    try:
        return load_image(path)
    except ValueError as e:
        if shown is None:
            raise
        if shown == DATA_URL and Path(path).is_file() and not Path(path).stat().st_size:  # decoding skips non-base64: "@@@@"
            raise ValueError(f"{DATA_URL} holds no bytes once decoded: its base64 part is empty or is not base64") from None
        raise ValueError(str(e).replace(Path(path).name, shown)) from None


def image_argument_problem(image: object) -> str:
    """What is wrong with an ``image`` argument that Gradio's MCP server could not turn into a file: said in the
    tool's terms, without echoing it (it may be a path on the caller's machine)."""
    if not isinstance(image, str) or not image.strip():
        return f"{NO_IMAGE}: send the slice as a data: URL (data:image/jpeg;base64,...) or an http(s) URL"
    if image.startswith("data:"):
        return f"{DATA_URL} is not valid base64: send data:image/<type>;base64, then the file's bytes in base64"
    return "the image must be a data: URL (data:image/jpeg;base64,...) or an http(s) URL: a path on your machine does not reach this server"


def answer(result: Prediction, disclaimer: str, images: bool = False, opacity: float = DEFAULT_OPACITY) -> dict:
    """What the tool says about one image, JSON-ready; ``images`` adds the heatmap and the mask as PNG data URLs."""
    mri, outline = result.in_distribution, result.outline
    probabilities, tumour = result.answered(4)  # both None over an image the OOD check flags
    w, h = result.image.size
    box = None if outline is None or outline.empty else [round(v, 4) for v in outline.box]
    out = {
        "model": result.model,
        "looks_like_brain_mri": mri,
        "prediction": result.prediction,
        "prediction_words": class_words(result.prediction) if mri else None,
        "probabilities": probabilities,
        "tumour_probability": tumour,
        "ood_reasons": [] if result.ood is None else result.ood.reasons,
        "tumour_box": box,  # [x0, y0, x1, y1], 0-1 of the image's width and height
        "tumour_box_px": None if box is None else [round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)],
        "tumour_area": None if outline is None else round(outline.area, 4),  # share of the image outlined
        "models_disagree": disagreement(result) or None,
        "image_size": [w, h],
        "disclaimer": disclaimer,
    }
    if images:
        heatmap = heatmap_picture(result.image, result, opacity)
        out["heatmap_png"] = None if heatmap is None else data_url(heatmap)
        out["tumour_mask_png"] = None if outline is None else mask_data_url(outline.mask)
    return out


def analyse_tool(
    predictor: Predictor, disclaimer: str, keep: Callable[[], set[Path]], pending: Callable[[], PendingUploads | None]
) -> Callable[..., str]:
    """The tool's function, bound to the app's predictor; ``keep`` and ``pending`` as for ``discard_upload``."""
    plain = disclaimer.replace("**", "")

    def analyse_slice(image: str, model: str | None = None, images: bool = False) -> str:
        # The docstring, which the MCP server sends as the tool's description, is tool_description()'s (below).
        if not image:
            raise user_error(NO_IMAGE)
        staged = staged_copies(image)  # sent as a data: URL: Gradio named it "file.jpg", which the caller never wrote
        try:
            with user_errors():  # the caller's input: a clear message, no traceback, nothing logged
                decoded = load_image_named(image, DATA_URL if staged else None)
                result = predictor.predict(decoded, predictor.resolve(model))  # a name, or the label the list shows
        finally:
            release_staged(staged)
            discard_upload(image, keep=keep(), pending=pending())
        return json.dumps(answer(result, plain, images), separators=(",", ":"))

    analyse_slice.__doc__ = tool_description(predictor.default_model, predictor.available, plain)
    return analyse_slice


def model_choices(default: str | None, models: list[str]) -> str:
    """How a caller picks a model, in the tool's and /predict's descriptions alike: this deployment's own names."""
    others = ", ".join(name for name in models if name != default)
    return f"leave empty for the app's default ({default or 'the first available model'}); or one of: {others}"


def tool_description(default: str | None, models: list[str], disclaimer: str) -> str:
    """The tool's docstring, which Gradio's MCP server sends as its description. Gradio reads one line an argument
    (``gradio.utils.get_function_description``: a wrapped line is lost), so each stays on one, and the model names are
    this deployment's own; ``disclaimer`` is the app's own, as plain text (each answer carries it too)."""
    return "\n".join(
        [
            f"Classify one brain MRI slice ({CLASSES_IN_WORDS}) and outline the tumour.",
            "",
            f"{disclaimer} An image that does not look like a brain MRI, or is unlike the slices the models learned from,"
            " gets no class, with the reasons why.",
            "",
            "Args:",
            f"    image: the slice ({accepted_formats(detailed=False)}) as a data: URL (base64; accepted here though the"
            " schema names http(s) URLs, with no upload tool needed), or as an http(s) URL that this server can fetch.",
            f"    model: {model_choices(default, models)}.",
            "    images: true to also return the heatmap and the tumour mask as PNG data URLs (large); false by default.",
            "",
            "Returns:",
            "    JSON text with model, looks_like_brain_mri, prediction, prediction_words, probabilities, tumour_probability,"
            " ood_reasons, tumour_box ([x0, y0, x1, y1] in 0-1 of the image), tumour_box_px, tumour_area (the share of the"
            " image outlined, 0-1), models_disagree (a sentence when the class and the outline disagree on whether there is a"
            " tumour, else null), image_size and disclaimer; with images, heatmap_png and tumour_mask_png too.",
        ]
    )


def predict_description(default: str | None, models: list[str]) -> str:
    """What ``/predict`` takes and gives, for its API page and ``gradio_client``'s ``view_api`` (which otherwise show
    Gradio's own FileData docstring for the image and call the heatmap a file path, where it comes as a data URL)."""
    return (
        f"Classify one brain MRI slice ({CLASSES_IN_WORDS}) for a page. image: the slice as a file"
        f" ({accepted_formats(detailed=False)}); model_name: {model_choices(default, models)}. Returns the label"
        " (the class probabilities as confidences), the heatmap (its 'url' a PNG data URL, its 'path' null) and the"
        " details (class, probabilities, the out-of-distribution verdict and its reasons, tumour_mask as a PNG data URL,"
        " model, latency_ms). Over an image that does not look like a brain MRI the label gives the verdict in words"
        " with no confidences, the heatmap is null, and the details' class, probabilities and heatmap fields are null. For"
        " compact JSON, as an assistant wants it, call /analyse_slice."
    )


def not_an_mcp_tool(fn: Callable) -> Callable:
    """``fn`` kept off the MCP server's tool list, and still an API endpoint. Gradio 6 has no per-event switch for
    this (``api_visibility`` hides an endpoint from both, and a client then cannot fill in its defaults); its MCP
    server lists a function as a tool unless the function is marked as some other MCP kind (gradio/mcp.py,
    ``list_tools``): marked as none of them, it is listed as nothing. tests/test_mcp.py checks the tool list."""
    fn._mcp_type = "api-only"
    return fn


def track_mcp_staging(blocks: gr.Blocks) -> None:
    """Record the files the launched app's MCP server writes for ``data:`` URL inputs (a no-op without MCP), and put
    them in Gradio's cache sweep (``delete_cache``); and keep Gradio's advice to upload files first out of the tool's
    description, which would contradict its image argument."""
    server = getattr(blocks, "mcp_server_obj", None)
    if server is None or getattr(server, "_brainmri_tracked", False):
        return
    if not any(kept is _STAGED for kept in blocks.temp_file_sets):
        blocks.temp_file_sets.append(_STAGED)
    convert = server.convert_strings_to_filedata

    def converting(value, filedata_positions):
        try:
            converted = convert(value, filedata_positions)
        except (ValueError, TypeError) as e:  # Gradio's own words ("Invalid file data format ... Received: <the input>")
            image = value.get("image") if isinstance(value, dict) else None
            raise ValueError(image_argument_problem(image)) from e
        for item in converted.values() if isinstance(converted, dict) else []:
            path = item.get("path") if isinstance(item, dict) else None
            if path and not str(path).startswith(("http://", "https://")) and gradio_cache_dir() in Path(path).resolve().parents:
                _STAGED.add(Path(path).resolve())
        return converted

    server.convert_strings_to_filedata = converting
    # Gradio appends to a file-taking tool's description that an assistant should first upload the file with its
    # upload_file_to_gradio tool; this server lists no such tool and takes a data: URL, as the image argument says.
    # (Both are Gradio's internals: where a later Gradio lacks them, its description stands.)
    describe, upload_hint = getattr(server, "get_fn_description", None), getattr(server, "_file_data_tool_description", None)
    if describe is not None and upload_hint:

        def describing(block_fn, tool_name: str) -> tuple[str, dict[str, str]]:
            description, parameters = describe(block_fn, tool_name)  # Gradio adds "." after the hint, before "Returns"
            return description.replace(upload_hint + ".", "").replace(upload_hint, ""), parameters

        server.get_fn_description = describing
    server._brainmri_tracked = True


def staged_copies(upload: str | Path) -> list[Path]:
    """The MCP server's staged copies with the same bytes as ``upload`` (none when it was not sent as a data: URL)."""
    if not _STAGED:
        return []
    try:
        data = Path(upload).read_bytes()
    except OSError:
        return []
    return [p for p in _STAGED if p.is_file() and p.stat().st_size == len(data) and p.read_bytes() == data]


def release_staged(copies: list[Path]) -> None:
    """Release staged copies whose upload has been read; the last request staged with those bytes deletes each."""
    for staged in copies:
        with _STAGED.lock:
            last = _STAGED.release(staged)
        if last:
            discard_upload(staged)
    _STAGED.forget([p for p in _STAGED if not p.is_file()])
