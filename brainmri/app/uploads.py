"""Uploads do not outlive their request: the app deletes each upload from Gradio's cache once decoded.

Gradio stores every upload under its cache folder (``GRADIO_TEMP_DIR``, by default
``<tmp>/gradio``) in a folder named after the content's hash, and only sweeps it later
(``delete_cache``). The app decodes an upload once (the UI keeps the decoded image in the
session's memory for re-runs), so :func:`discard_upload` removes the file and its folder at once.
Files outside the cache (a path a caller passed in) are never touched, and nothing about the
upload is logged.

Identical uploads share one path. So that a request does not delete the file another request
with the same bytes has uploaded but not yet read (a class clicking one example at once),
:class:`PendingUploads` counts each path's uploads not yet consumed, and the last consumer deletes.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from contextlib import nullcontext
from pathlib import Path

import gradio as gr
from gradio.utils import NamedString

from brainmri.data.imageio import accepted_formats
from brainmri.settings import gradio_temp_dir, resolved


def gradio_cache_dir() -> Path:
    """Where Gradio keeps uploads and outputs."""
    return gradio_temp_dir()


def kept_in_cache(blocks: gr.Blocks) -> set[Path]:
    """Files the app itself placed in Gradio's cache for good (static values, such as the example thumbnails)."""
    return {resolved(str(p)) for block in blocks.blocks.values() for p in getattr(block, "keep_in_cache", ())}


class PendingUploads(set):
    """Gradio's set of uploaded paths (``Blocks.upload_file_set``), counting each path's uploads not yet consumed.

    Gradio adds every upload's path here (``update``) right after moving the file into place; each request that
    decodes one releases it (:meth:`release`), and the last release takes the path out of the set too: Gradio's
    cache sweep never drops a path whose file is gone, so every upload's name stayed in memory for good. A set
    still, for Gradio's own membership checks.
    """

    def __init__(self, paths=()):
        super().__init__(paths)
        self.lock = threading.Lock()  # uploads arrive on the event loop, releases come from worker threads
        self._pending: Counter[Path] = Counter()
        self._entries: dict[Path, set] = {}  # a resolved path -> Gradio's own entries for it

    def add(self, path: str | Path) -> None:
        self.update([path])

    def update(self, *groups) -> None:
        with self.lock:
            for group in groups:
                for entry in group:
                    file = Path(entry).resolve()
                    self._pending[file] += 1
                    self._entries.setdefault(file, set()).add(entry)
                    super().add(entry)

    def __iter__(self):
        """Over a copy: Gradio's cache sweep iterates in a worker thread while uploads arrive and requests release."""
        with self.lock:
            return iter(set(super().__iter__()))

    def __isub__(self, deleted):
        """Gradio's cache sweep (``temp_set -= to_remove``): files it deleted, pending or not, are forgotten, so that
        an abandoned upload (its request never ran) does not keep a later upload of the same bytes on disk."""
        self.forget(deleted)
        return self

    def forget(self, deleted: Iterable[str | Path]) -> None:
        """Drop these paths and their counts, however many uploads of them were pending."""
        deleted = list(deleted)
        with self.lock:
            for entry in deleted:
                self._drop(Path(entry).resolve())
            super().difference_update(deleted)

    def _drop(self, file: Path) -> None:
        """``file``'s count and Gradio's entries for it, gone (the caller holds ``lock``)."""
        self._pending.pop(file, None)
        super().difference_update(self._entries.pop(file, ()))

    def release(self, file: Path) -> bool:
        """One upload of ``file`` consumed; True when none is left pending (the caller holds ``lock``)."""
        if self._pending[file] > 1:
            self._pending[file] -= 1
            return False
        self._drop(file)
        return True


def count_pending_uploads(blocks: gr.Blocks) -> PendingUploads:
    """Make ``blocks`` count pending uploads per path (before it is launched); returns the counter."""
    old = blocks.upload_file_set
    if not isinstance(old, PendingUploads):
        blocks.upload_file_set = PendingUploads(old)
        # Gradio's cache sweep walks temp_file_sets, which holds the set itself: swap it there too.
        blocks.temp_file_sets = [blocks.upload_file_set if s is old else s for s in blocks.temp_file_sets]
    return blocks.upload_file_set


def discard_upload(path: str | Path | None, keep: Collection[Path] = (), pending: PendingUploads | None = None) -> None:
    """Delete an upload that lies inside Gradio's cache, and its folder once empty; anything else is left alone.

    Gradio files an upload under a folder named after its content's hash, so an upload with the bytes and the
    name of one of the app's own files (an example downloaded and sent back) is that very file: ``keep`` spares it.
    With ``pending``, the file stays while another upload of the same bytes still waits to be read.
    """
    if not path:
        return
    file = Path(path).resolve()
    if gradio_cache_dir() not in file.parents or file in keep:
        return
    with pending.lock if pending is not None else nullcontext():
        if pending is not None and not pending.release(file):
            return  # the last request with these bytes deletes them
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


def fetch_errors_named(box: gr.File, pending: Callable[[], PendingUploads | None] | None = None) -> gr.File:
    """Patch a ``gr.File`` that an API or MCP caller may fill with an http(s) URL: Gradio fetches the URL before the
    app's function runs, and when that fails the caller read only "the upstream Gradio app has raised an exception"
    while the server's log got a traceback naming the URL. Now the caller gets why, as a ``gr.Error``, and nothing
    reaches the log. With ``pending`` (the app's upload counter, asked at request time), a fetched file is counted
    like an upload: two requests for one URL share its cache path, and the first to finish must not delete it under
    the second. Patched on the instance, like :func:`without_stray_temp_file`."""
    fetch = box.async_move_resource_to_block_cache

    async def move_resource_to_block_cache(url_or_file_path):
        is_url = str(url_or_file_path or "").startswith(("http://", "https://"))  # what Gradio fetches
        try:
            path = await fetch(url_or_file_path)
        except Exception as e:
            if not is_url:
                raise
            reason = str(e)[:200] or type(e).__name__  # e.g. "Unable to resolve hostname ...", "... failed validation"
            raise gr.Error(
                f"could not fetch the image from its URL ({reason}); send the image itself (a data: URL), or a URL this server can reach",
                print_exception=False,
            ) from None
        counter = pending() if pending is not None and is_url and path else None
        if counter is not None:
            counter.add(path)
        return path

    box.async_move_resource_to_block_cache = move_resource_to_block_cache
    return box


def api_file_input(pending: Callable[[], PendingUploads | None] | None = None) -> gr.File:
    """The hidden file input of an API endpoint or MCP tool: a path, with no stray temp file, and a URL that cannot
    be fetched named as such (a fetched one counted in ``pending``, as an upload is)."""
    component = fetch_errors_named(without_stray_temp_file(gr.File(visible=False)), pending)
    schema = component.api_info

    def described() -> dict:  # the API page and view_api show this, not Gradio's FileData docstring
        return {**schema(), "additional_description": f"the slice, a file: {accepted_formats(detailed=False)}"}

    component.api_info = described  # the instance's own, as the app patches instances (no subclass, no .pyi stub)
    return component
