"""What every command-line tool of the project shares: its logging, its ``--data`` argument, how a
bad argument ends the run, and how its figures are written."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

from brainmri.settings import default_data

LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"
# Libraries that log a line per request or per weight file at INFO: warnings only.
QUIET_LOGGERS = ("accelerate", "httpx", "timm")


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr at ``level`` as ``time logger: message``, the chatty libraries at WARNING.

    Call it once, first thing in a ``main()`` (or the app); modules only ask for
    ``logging.getLogger(__name__)``. Like ``logging.basicConfig``, it leaves a root logger that
    already has handlers (pytest's, an embedding program's) alone.
    """
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def add_data_argument(parser: argparse.ArgumentParser, overrides: str = "") -> None:
    """Add the project's one ``--data`` option: a folder with Training/ and Testing/, or a Hub dataset id.

    It defaults to :func:`brainmri.settings.default_data`, read when the parser is built.

    Args:
        overrides: where the command otherwise takes its data from (say ``"the config's"``); then
            ``--data`` has no default and None means "not given".
    """
    what = "image folder with Training/ and Testing/, or a Hub dataset id"
    if overrides:
        parser.add_argument("--data", default=None, help=f"{what}, instead of {overrides}")
    else:
        parser.add_argument("--data", default=default_data(), help=f"{what} (default: %(default)s)")


def exit_code(command: Callable[[], object], logger: logging.Logger, errors: tuple[type[Exception], ...] = (ValueError,)) -> int:
    """Run ``command``: 0 when it succeeds; 2, with its message as one log line and no traceback, when it raises one of
    ``errors`` (by default ValueError, the project's error for bad arguments or data)."""
    try:
        command()
    except errors as e:
        logger.error("%s", e)
        return 2
    return 0


def write_json(path: str | Path | None, obj: object) -> None:
    """Write a command's figures as indented JSON to ``path`` (its ``--json`` / ``--out`` option), making the folder;
    nothing when ``path`` is None."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2) + "\n")
