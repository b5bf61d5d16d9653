"""The Gradio app, launched in-process and called through gradio_client; and started as a process, offline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port
from PIL import Image
from shipped import require_shipped
from upload_samples import PATIENT_NAME, bad_uploads, valid_uploads

from brainmri.models.registry import APP_DEFAULT
from brainmri.rendering import decode_data_url

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def slice_path(data_dir: Path) -> Path:
    return sorted((data_dir / "Testing" / "pituitary").glob("*.jpg"))[0]


def test_predict_endpoint_with_default_model(client, slice_path: Path):
    from gradio_client import handle_file

    label, heatmap, details = client.predict(handle_file(str(slice_path)), api_name="/predict")
    assert details["model"] == APP_DEFAULT
    assert details["in_distribution"] is True and details["prediction"] == label["label"]
    assert sum(c["confidence"] for c in label["confidences"]) == pytest.approx(1.0, abs=1e-4)
    assert sum(details["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert 0 <= details["tumour_probability"] <= 1 and details["latency_ms"] > 0
    assert heatmap["path"] is None and heatmap["url"].startswith("data:image/png;base64,")  # inline: never a cached file
    with Image.open(slice_path) as original:
        assert decode_data_url(heatmap["url"]).size == original.size


def test_predict_endpoint_with_dicom_and_a_named_model(client, slice_path: Path, tmp_path: Path):
    from gradio_client import handle_file

    jpeg = client.predict(handle_file(str(slice_path)), "simple_cnn_7", api_name="/predict")[2]
    path = tmp_path / "scan.dcm"
    path.write_bytes(valid_uploads(Image.open(slice_path).convert("RGB"))["dicom"][1])
    label, heatmap, details = client.predict(handle_file(str(path)), "simple_cnn_7", api_name="/predict")
    assert details["model"] == "simple_cnn_7"
    assert details["in_distribution"] and jpeg["in_distribution"]  # else both classes are null and equal for nothing
    assert details["top_class"] == jpeg["top_class"]
    assert PATIENT_NAME not in str(details) and "SECRET-ID" not in str(details)
    assert decode_data_url(heatmap["url"]).mode == "RGB"


def test_predict_takes_the_label_the_list_shows(client, slice_path: Path):
    """A caller may copy a model's label from the page (with or without its bracketed accuracy) instead of its name."""
    from gradio_client import handle_file

    from brainmri.models.catalog import discover, labelled_choices

    label = dict((n, text) for text, n in labelled_choices(discover(hub=False)))["simple_cnn_7"]
    for typed in (label, label.rsplit(" (", 1)[0]):
        assert client.predict(handle_file(str(slice_path)), typed, api_name="/predict")[2]["model"] == "simple_cnn_7"


@pytest.mark.parametrize("kind", ["empty", "text", "truncated_jpeg", "too_small", "bomb", "dicom_without_pixels"])
def test_bad_input_is_a_clear_error_and_the_server_keeps_serving(client, slice_path: Path, tmp_path: Path, kind: str):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    name, data, words = bad_uploads(Image.open(slice_path).convert("RGB"))[kind]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(AppError, match=words) as err:
        client.predict(handle_file(str(path)), api_name="/predict")
    assert "Traceback" not in str(err.value)
    assert client.predict(handle_file(str(slice_path)), api_name="/predict")[2]["in_distribution"] is True


def test_unavailable_model_is_a_clear_error(client, slice_path: Path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="resnet50 is not available"):
        client.predict(handle_file(str(slice_path)), "resnet50", api_name="/predict")


def test_app_module_is_thin_and_lists_every_registry_model():
    import app
    from brainmri.models.registry import ENSEMBLES, REGISTRY

    assert set(app.PREDICTOR.available) | set(app.PREDICTOR.unavailable) == set(REGISTRY) | set(ENSEMBLES)
    assert len((ROOT / "app.py").read_text().splitlines()) < 300


@pytest.mark.slow
def test_app_starts_offline_on_the_env_port(slice_path: Path):
    """`python app.py` with HF_HUB_OFFLINE=1 and GRADIO_SERVER_PORT serves /predict on that port."""
    from gradio_client import Client, handle_file

    require_shipped()
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"app did not start on port {port}:\n{proc.stdout.read() if proc.poll() is not None else ''}")
                time.sleep(0.5)
        details = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(handle_file(str(slice_path)), api_name="/predict")[2]
        assert details["model"] == APP_DEFAULT
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_app_writes_no_stub_files_into_its_source_tree():
    """Gradio writes a .pyi beside any module that subclasses a component; the app patches instances instead."""
    import app  # noqa: F401

    assert [*ROOT.glob("*.pyi"), *(ROOT / "brainmri").rglob("*.pyi")] == []


def test_compare_without_an_image_says_so_where_its_answer_goes_and_logs_nothing(capsys, caplog):
    import app
    from brainmri.app.compare_tab import compare
    from brainmri.app.comparison import NOTHING_TO_COMPARE

    table, grid, summary, compared = compare(app.PREDICTOR, set(), None, "Grad-CAM", None)
    assert table == "" and grid == "" and compared is None
    assert summary == NOTHING_TO_COMPARE and "Upload an image in the Classify tab" in summary
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err and not [r for r in caplog.records if r.levelname in {"WARNING", "ERROR"}]


@pytest.mark.parametrize("endpoint", ["predict", "analyse_slice"])
def test_no_image_is_a_clear_error_that_is_not_printed(endpoint: str):
    import gradio as gr

    import app

    handler = app.predict if endpoint == "predict" else app.ANALYSE
    with pytest.raises(gr.Error, match="no image given") as raised:
        handler("")
    assert raised.value.print_exception is False


def test_only_a_value_error_becomes_the_visitors_message():
    import gradio as gr

    from brainmri.app.errors import user_errors

    with pytest.raises(gr.Error, match="too small"), user_errors():
        raise ValueError("too small")
    with pytest.raises(KeyError), user_errors():  # a fault of the server stays one: logged, not blamed on the visitor
        raise KeyError("weights")


def test_an_example_says_the_datasets_label_beside_every_answer_on_it_and_when_the_answer_is_wrong():
    from types import SimpleNamespace

    import app
    from brainmri.app.display import example_note
    from brainmri.vocabulary import class_words

    for index, (_, label) in enumerate(app.examples()):
        view = app.classify_example(None, "LayerCAM", 0.45, True, SimpleNamespace(index=index))
        assert f"The dataset labels this example **{class_words(label)}**" in view.summary or (
            f"**The dataset labels this example {class_words(label)}, so this answer is wrong.**" in view.summary
        )
        assert view.session.label == label
        again = app.classify(view.session, "tf_efficientnet_lite0", "Grad-CAM", 0.45)  # another model: still said
        assert class_words(label) in again.summary.split("\n\n")[-1]
    assert example_note(None, SimpleNamespace(prediction="glioma")) == ""  # an upload has no label
    assert example_note("glioma", SimpleNamespace(prediction="glioma")).endswith("**glioma** too.")
    assert "so this answer is wrong" in example_note("pituitary", SimpleNamespace(prediction="meningioma"))
    assert example_note("meningioma", SimpleNamespace(prediction=None)).endswith("**meningioma**.")  # refused: no answer


def test_compares_image_key_outlives_the_session_image_it_guards():
    """Compare's record of which image its results are of has no TTL of its own: expiring before the results did, it
    let one image's answers stand beside another's (stale_message reads no record as nothing to clear)."""
    import app
    from brainmri.app.compare_tab import forget_stale

    (fn,) = [f for f in app.demo.fns.values() if getattr(f.fn, "__name__", "") == forget_stale.__name__]
    session, compared = fn.inputs
    assert compared.time_to_live == float("inf") and session.time_to_live == app.SESSION_TTL_S  # Gradio: none is inf


def test_the_launch_log_names_the_host_that_sets_the_speed(caplog):
    """A Space's log says which CPU serves it (docs/space.md): the same words the speed scripts print."""
    import app
    from brainmri.runtime import describe_cpu

    with caplog.at_level("INFO", logger="app"):
        app.log_host()  # what app.launch logs once the default model is loaded
    assert f"on {describe_cpu()}, " in caplog.text and "usable cores" in caplog.text


def test_the_api_page_says_what_predict_takes_and_gives():
    """What view_api and the API page print: the image's formats (not Gradio's FileData docstring), the heatmap as a
    data URL (not a file path to fetch), and the endpoint's own description with this deployment's model names."""
    import app

    endpoint = app.demo.get_api_info()["named_endpoints"]["/predict"]
    assert "DICOM" in endpoint["parameters"][0]["python_type"]["description"]
    assert "FileData" not in str(endpoint["parameters"][0]["python_type"])
    assert "data: URL" in endpoint["returns"][1]["python_type"]["description"]
    assert "simple_cnn_7" in endpoint["description"] and "/analyse_slice" in endpoint["description"]
    tool = app.demo.get_api_info()["named_endpoints"]["/analyse_slice"]
    assert "DICOM" in tool["parameters"][0]["python_type"]["description"]
