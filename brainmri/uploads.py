"""Uploads do not outlive their request: the app deletes each upload from Gradio's cache once decoded.

Gradio stores every upload under its cache folder (``GRADIO_TEMP_DIR``, by default
``<tmp>/gradio``) in a folder of its own, and only sweeps it later (``delete_cache``). The app
decodes an upload once (the UI keeps the decoded image in the session's memory for re-runs),
so :func:`discard_upload` removes the file and its folder at once. Files outside the cache (a
path a caller passed in) are never touched, and nothing about the upload is logged.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection
from pathlib import Path

import gradio as gr
from gradio.utils import NamedString


def gradio_cache_dir() -> Path:
    """Where Gradio keeps uploads and outputs."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def kept_in_cache(blocks: gr.Blocks) -> set[Path]:
    """Files the app itself placed in Gradio's cache for good (static values, such as the example thumbnails)."""
    return {Path(p).resolve() for block in blocks.blocks.values() for p in getattr(block, "keep_in_cache", ())}


def discard_upload(path: str | Path | None, keep: Collection[Path] = ()) -> None:
    """Delete an upload that lies inside Gradio's cache, and its folder once empty; anything else is left alone.

    Gradio files an upload under a folder named after its content's hash, so an upload with the bytes and the
    name of one of the app's own files (an example downloaded and sent back) is that very file: ``keep`` spares it.
    """
    if not path:
        return
    file = Path(path).resolve()
    if gradio_cache_dir() not in file.parents or file in keep:
        return
    file.unlink(missing_ok=True)
    try:
        file.parent.rmdir()  # Gradio's per-upload folder; kept if something else is still in it
    except OSError:
        pass


def without_stray_temp_file(box: gr.File) -> gr.File:
    """Patch a ``gr.File`` (one file, as a path) around a Gradio 6 wart: its preprocess opens an empty temp file in the
    cache on every request and never removes it, one stray file per call. The path is all the app needs.

    Patched on the instance, not subclassed: Gradio writes a ``.pyi`` stub beside any module that subclasses a component.
    """
    base = box._process_single_file

    def process_single_file(f):
        if box.type == "filepath" and not box.file_types:
            return NamedString(f.path)
        return base(f)

    box._process_single_file = process_single_file
    return box
