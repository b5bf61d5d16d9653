"""What Gradio does on every request that this app never reads: made lazy or bounded, or not kept at all.

A profile of the server under load (py-spy, ``scripts/load_test.py``; docs/serving.md) found two costs:

- **A new session builds the config of every block.** Each API call without a session opens one, and Gradio's
  ``SessionState`` builds ``config_for_block`` for all of the page's blocks at once (78 here: the Experiments tab's
  tables and figures among them), 7% of the server's busy time, and most of the 0.46 MB a session held. A request
  reads the config of its own inputs and outputs only. :class:`LazyBlockConfigs` builds a block's config when it is
  first read, from the very block the eager dictionary would have used, and builds all of them (in the page's order)
  when Gradio lists them (``SessionState.components``, for a deep link).
- **The queue summarises every event so far after each one**: a pandas DataFrame of up to 10,000 past events, for
  Gradio's monitoring page, which this app does not open. Gradio's own variables bound it
  (``GRADIO_ANALYTICS_CACHE_FREQUENCY``, ``GRADIO_ANALYTICS_MAX_EVENTS``); set here unless the environment sets them.

And two things a session kept of an upload for longer than the app says (docs/app.md: 10 minutes at most):

- **Every input and output value, copied into the session's page config** (``_update_value_in_config``): the
  upload's path and file name, the decoded picture, the heatmap, the details with the outline. Only Gradio's deep
  links read them back (``/gradio_api/deep_link`` even writes them to a file), and this app has none. They stayed
  until 256 newer sessions pushed the session out: on a quiet server, indefinitely. :func:`sessions_keep_no_values`
  keeps none.
- **A closed tab's State, for an hour** (Gradio's ``STATE_TTL_WHEN_CLOSED``) instead of the app's 10 minutes: closing
  the tab lengthened the decoded image's life. A new session here caps it at the page's shortest State lifetime.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from copy import copy
from typing import Any

import gradio as gr
from gradio import state_holder

from brainmri.settings import bound_gradio_analytics, gradio_closed_session_ttl

_logger = logging.getLogger(__name__)

# The Gradio whose SessionState.__init__ lazy_session_state repeats (requirements.txt pins it: the Space's sdk_version).
PATCHED_GRADIO = "6.31.0"
EAGER_SESSION_INIT = state_holder.SessionState.__init__  # Gradio's own, kept for the tests' comparison
KEEPING_UPDATE = state_holder.SessionState._update_value_in_config  # Gradio's own, likewise
ANALYTICS = {"cache_frequency": 100, "max_events": 1000}  # the queue's summary: every 100 events, of the last 1,000


class LazyBlockConfigs(dict):
    """``SessionState.config_values``: block id -> ``config_for_block``, each built when first read or listed."""

    def __init__(self, state: Any, ids: Iterable[int]):
        super().__init__()
        self._state = state
        self._order = list(ids)
        self._pending = set(self._order)

    def _build(self, key: int) -> dict:
        blocks = self._state.blocks_config
        value = blocks.config_for_block(key, [], blocks.blocks[key])
        self[key] = value
        return value

    def __missing__(self, key: int) -> dict:
        if key not in self._pending:
            raise KeyError(key)
        return self._build(key)

    def __setitem__(self, key: int, value: dict) -> None:
        self._pending.discard(key)
        super().__setitem__(key, value)

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or key in self._pending

    def get(self, key: int, default: Any = None) -> Any:
        return self[key] if key in self else default

    def _built(self) -> list[int]:
        """Every key, built: the page's blocks in its order, then any added since."""
        for key in [k for k in self._order if k in self._pending]:
            self._build(key)
        page = set(self._order)
        return self._order + [k for k in super().keys() if k not in page]

    def keys(self) -> list[int]:  # type: ignore[override]
        return self._built()

    def items(self) -> list[tuple[int, dict]]:  # type: ignore[override]
        return [(k, super(LazyBlockConfigs, self).__getitem__(k)) for k in self._built()]

    def values(self) -> list[dict]:  # type: ignore[override]
        return [v for _, v in self.items()]

    def __iter__(self) -> Iterator[int]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(set(self._order).union(super().keys()))


def _lazy_init(self, blocks: gr.Blocks) -> None:
    """Gradio 6.31's SessionState.__init__, with the block configs built on demand (LazyBlockConfigs)."""
    self.blocks_config = copy(blocks.default_config)
    self.config_values = LazyBlockConfigs(self, [k for k in self.blocks_config.blocks if k in blocks.blocks])
    self.state_data = {}
    self._state_ttl = {}
    self.is_closed = False
    lives = [b.time_to_live for b in self.blocks_config.blocks.values() if isinstance(b, gr.State)]
    self.STATE_TTL_WHEN_CLOSED = min([gradio_closed_session_ttl(), *lives])  # closing a tab never lengthens a State


def _keep_no_value(self, key: int, value: Any) -> None:
    """``SessionState._update_value_in_config``, keeping nothing: a request's inputs and outputs leave with it."""


def sessions_keep_no_values() -> bool:
    """Make Gradio sessions keep no copy of a request's input and output values; True when done. Only on the Gradio
    whose ``SessionState`` this was written against: on another it logs a warning and changes nothing."""
    if gr.__version__ != PATCHED_GRADIO:
        _logger.warning("gradio %s, not %s: sessions keep a copy of each request's values", gr.__version__, PATCHED_GRADIO)
        return False
    state_holder.SessionState._update_value_in_config = _keep_no_value
    return True


def lazy_session_state() -> bool:
    """Make new Gradio sessions build block configs on demand; True when done. Only on the Gradio whose
    ``SessionState.__init__`` this repeats: on another it logs a warning and changes nothing."""
    if gr.__version__ != PATCHED_GRADIO:
        _logger.warning("gradio %s, not %s: sessions build every block's config up front", gr.__version__, PATCHED_GRADIO)
        return False
    state_holder.SessionState.__init__ = _lazy_init
    return True


def bound_gradio_bookkeeping() -> None:
    """Before ``demo.queue()`` (the queue reads the analytics variables when it is made)."""
    bound_gradio_analytics(**ANALYTICS)
    lazy_session_state()
    sessions_keep_no_values()
