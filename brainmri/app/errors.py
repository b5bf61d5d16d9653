"""How the app answers a visitor's mistake: a ``gr.Error`` that names the problem, and no traceback in the log."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr

NO_IMAGE = "no image given"


def user_error(message: str) -> gr.Error:
    """Shown to the visitor, never printed: the message may name their upload, which is not logged."""
    return gr.Error(message, print_exception=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Problems with the visitor's input or choice (a ValueError in the package) become a clear ``gr.Error``."""
    try:
        yield
    except ValueError as e:
        raise user_error(str(e)) from None
