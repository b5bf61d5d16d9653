"""Images sent to the browser inside the response, never written to Gradio's cache.

A stock ``gr.Image`` output saves each picture to Gradio's cache folder and
serves it from there until the cache is swept. A heatmap is the user's slice with colour on top,
so it is as private as the upload itself: :func:`send_inline` makes such an output encode it as
a ``data:`` URL in the response instead, and nothing derived from an upload touches the disk. API clients get the
same thing: ``{"url": "data:image/png;base64,...", "path": None, ...}`` (see :func:`decode_data_url`).
"""

from __future__ import annotations

import gradio as gr
from gradio.data_classes import ImageData
from PIL import Image

from brainmri.rendering import MIME_TYPES, data_url


def _inline(image: Image.Image, fmt: str, name: str) -> ImageData:
    return ImageData(url=data_url(image, fmt), orig_name=f"{name}.{fmt}", mime_type=MIME_TYPES[fmt])


def _image_postprocess(component: gr.Image):
    base = component.postprocess

    def postprocess(value):
        if isinstance(value, Image.Image):
            return _inline(value, component.format if component.format in MIME_TYPES else "png", "heatmap")
        return base(value)

    return postprocess


def send_inline(component: gr.Image) -> gr.Image:
    """Make an output ``gr.Image`` send its PIL images as data URLs (in the component's ``format``, PNG or lossless
    WebP) instead of files in Gradio's cache; other values go the stock way. (Compare's heatmaps are HTML with data
    URLs already: :func:`brainmri.app.display.compare_grid`.)

    The instance is patched rather than the class subclassed: Gradio writes a ``.pyi`` stub beside any module that
    subclasses a component, and an app should not write into its own source tree.
    """
    if not isinstance(component, gr.Image):
        raise TypeError(f"send_inline takes a gr.Image, not {type(component).__name__}")
    component.postprocess = _image_postprocess(component)
    schema = component.api_info

    def described() -> dict:  # the API page and view_api would call it a file path, which a client would then fetch
        return {**schema(), "description": "its 'url' a data: URL of the picture, its 'path' null"}  # an output's: view_api

    component.api_info = described
    return component
