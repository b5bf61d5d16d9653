"""What every command-line tool of the project shares: how a bad argument ends the run."""

from __future__ import annotations

import logging
from collections.abc import Callable


def exit_code(command: Callable[[], object], logger: logging.Logger) -> int:
    """Run ``command``: 0 when it succeeds; 2, with its message as one log line and no traceback,
    when it raises ValueError (the project's error for bad arguments or data)."""
    try:
        command()
    except ValueError as e:
        logger.error("%s", e)
        return 2
    return 0
