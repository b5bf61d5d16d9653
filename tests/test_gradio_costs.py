"""brainmri.app.gradio_costs: a new Gradio session builds a block's config when it is read, and ends up with the very
configs Gradio's own eager session has; the queue's analytics are bounded."""

from __future__ import annotations

import gradio as gr
import pytest
from gradio import state_holder
from gradio.blocks import BlocksConfig

from brainmri.app import gradio_costs

EAGER_INIT = gradio_costs.EAGER_SESSION_INIT


def small_page() -> tuple[gr.Blocks, gr.Image, gr.Textbox]:
    with gr.Blocks() as demo:
        image = gr.Image(type="pil")
        with gr.Tab("more"):
            gr.Markdown("a table and a plot the request never reads")
            gr.Dataframe(value=[[1, 2], [3, 4]])
            state = gr.State(None)
        text = gr.Textbox()
        image.change(lambda i, s: "x", [image, state], text)
    return demo, image, text


def eager_and_lazy(demo: gr.Blocks):
    eager = state_holder.SessionState.__new__(state_holder.SessionState)
    EAGER_INIT(eager, demo)
    lazy = state_holder.SessionState.__new__(state_holder.SessionState)
    gradio_costs._lazy_init(lazy, demo)
    return eager, lazy


def test_a_lazy_session_builds_only_what_a_request_reads(monkeypatch):
    demo, image, text = small_page()
    built = []
    original = BlocksConfig.config_for_block
    monkeypatch.setattr(BlocksConfig, "config_for_block", staticmethod(lambda _id, *a, **k: built.append(_id) or original(_id, *a, **k)))
    eager, lazy = eager_and_lazy(demo)
    assert len(built) == len(eager.config_values) > 4  # Gradio's own: every block up front
    built.clear()
    lazy[image._id] = image  # what Blocks.preprocess_data and postprocess_data do for one request
    lazy._update_value_in_config(image._id, {"path": "upload.png"})
    lazy._update_value_in_config(text._id, "answer")
    assert sorted(set(built)) == sorted({image._id, text._id})


def test_a_lazy_session_lists_the_same_configs_as_gradios_own():
    demo, image, text = small_page()
    eager, lazy = eager_and_lazy(demo)
    for state in (eager, lazy):
        state[image._id] = image
        state._update_value_in_config(image._id, {"path": "upload.png"})
        state._update_value_in_config(text._id, "answer")
        assert image._id in state.config_values and text._id in state.config_values and -1 not in state.config_values
    assert list(lazy.components) == list(eager.components)  # the deep-link listing: same blocks, same order, same values
    assert len(lazy.config_values) == len(eager.config_values) and list(lazy.config_values) == list(eager.config_values)
    assert lazy.config_values.get(text._id)["props"]["value"] == "answer" and lazy.config_values.get(-1) is None
    with pytest.raises(KeyError):
        lazy.config_values[-1]


def test_the_app_runs_lazy_sessions_and_bounded_analytics():
    import app

    assert state_holder.SessionState.__init__ is gradio_costs._lazy_init
    queue = app.demo._queue
    assert queue.ANALYTICS_MAX_EVENTS == gradio_costs.ANALYTICS["max_events"]
    assert queue.ANAYLTICS_CACHE_FREQUENCY == gradio_costs.ANALYTICS["cache_frequency"]  # Gradio's spelling


def test_another_gradio_keeps_its_own_sessions(monkeypatch):
    monkeypatch.setattr(state_holder.SessionState, "__init__", EAGER_INIT)
    monkeypatch.setattr(gr, "__version__", "0.0.1")
    assert gradio_costs.lazy_session_state() is False
    assert state_holder.SessionState.__init__ is EAGER_INIT
