"""Uploads do not outlive their request: the API deletes its upload from Gradio's cache once decoded.

Gradio stores every upload under its cache folder (``GRADIO_TEMP_DIR``, by default
``<tmp>/gradio``) in a folder of its own, and only sweeps it later (``delete_cache``). An
API call decodes its upload once, so :func:`discard_upload` removes the file and its folder
as soon as the request is done. Files outside the cache (a path a caller passed in) are never
touched, and nothing about the upload is logged.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def gradio_cache_dir() -> Path:
    """Where Gradio keeps uploads and outputs."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def discard_upload(path: str | Path | None) -> None:
    """Delete an upload that lies inside Gradio's cache, and its folder once empty; anything else is left alone."""
    if not path:
        return
    file = Path(path).resolve()
    if gradio_cache_dir() not in file.parents:
        return
    file.unlink(missing_ok=True)
    try:
        file.parent.rmdir()  # Gradio's per-upload folder; kept if something else is still in it
    except OSError:
        pass
