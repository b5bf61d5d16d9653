"""brainmri.app.gradio_costs: a new Gradio session builds a block's config when it is read, and ends up with the very
configs Gradio's own eager session has; the queue's analytics are bounded."""

from __future__ import annotations

import gradio as gr
import pytest
from gradio import state_holder
from gradio.blocks import BlocksConfig

from brainmri.app import gradio_costs

EAGER_INIT = gradio_costs.EAGER_SESSION_INIT
KEEPING_UPDATE = gradio_costs.KEEPING_UPDATE


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
    monkeypatch.setattr(state_holder.SessionState, "_update_value_in_config", KEEPING_UPDATE)  # as Gradio keeps them
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


def test_a_lazy_session_lists_the_same_configs_as_gradios_own(monkeypatch):
    monkeypatch.setattr(state_holder.SessionState, "_update_value_in_config", KEEPING_UPDATE)  # as Gradio keeps them
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


def test_a_session_keeps_no_value_of_a_request(monkeypatch):
    monkeypatch.setattr(state_holder.SessionState, "_update_value_in_config", KEEPING_UPDATE)
    demo, image, text = small_page()
    kept = state_holder.SessionState.__new__(state_holder.SessionState)
    gradio_costs._lazy_init(kept, demo)
    kept._update_value_in_config(text._id, "answer")
    assert kept.config_values[text._id]["props"]["value"] == "answer"  # Gradio's own: kept until the session goes

    assert gradio_costs.sessions_keep_no_values()
    session = state_holder.SessionState.__new__(state_holder.SessionState)
    gradio_costs._lazy_init(session, demo)
    session[image._id] = image  # a request: its upload in, its answer out
    session._update_value_in_config(image._id, {"path": "/tmp/gradio/abc/patient-name.png"})
    session._update_value_in_config(text._id, "answer")
    listed = repr(list(session.components))  # what a deep link would write to a file
    assert "patient-name" not in listed and "answer" not in listed


@pytest.mark.parametrize(("lives", "closed"), [((), 3600), ((600,), 600), ((600, 30), 30), ((7200,), 3600)])
def test_closing_a_tab_never_lengthens_a_states_life(lives: tuple[int, ...], closed: int):
    with gr.Blocks() as demo:
        for seconds in lives:
            gr.State(None, time_to_live=seconds)
        gr.State(None)  # no lifetime of its own: until the session goes
    session = state_holder.SessionState.__new__(state_holder.SessionState)
    gradio_costs._lazy_init(session, demo)
    assert session.STATE_TTL_WHEN_CLOSED == closed


def test_the_app_runs_lazy_sessions_and_bounded_analytics():
    import app

    assert state_holder.SessionState.__init__ is gradio_costs._lazy_init
    assert state_holder.SessionState._update_value_in_config is gradio_costs._keep_no_value
    queue = app.demo._queue
    assert queue.ANALYTICS_MAX_EVENTS == gradio_costs.ANALYTICS["max_events"]
    assert queue.ANAYLTICS_CACHE_FREQUENCY == gradio_costs.ANALYTICS["cache_frequency"]  # Gradio's spelling


def test_another_gradio_keeps_its_own_sessions(monkeypatch):
    monkeypatch.setattr(state_holder.SessionState, "__init__", EAGER_INIT)
    monkeypatch.setattr(gr, "__version__", "0.0.1")
    monkeypatch.setattr(state_holder.SessionState, "_update_value_in_config", KEEPING_UPDATE)
    assert gradio_costs.lazy_session_state() is False and gradio_costs.sessions_keep_no_values() is False
    assert state_holder.SessionState.__init__ is EAGER_INIT
    assert state_holder.SessionState._update_value_in_config is KEEPING_UPDATE
