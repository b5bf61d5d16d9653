"""The app's own launch serves an MCP tool (brainmri.app.tool), called here with the ``mcp`` package's own client."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from conftest import ROOT

from brainmri.app.uploads import gradio_cache_dir

SLICE = ROOT / "examples" / "glioma_1.jpg"  # a Testing slice with no twin in Training (examples/README.md)
pytestmark = pytest.mark.slow  # a launched app and a model pass per call: several seconds


def _session_call(url: str, calls):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def run():
        async with streamable_http_client(url) as (read, write, _), ClientSession(read, write) as session:
            await session.initialize()
            return [await call(session) for call in calls]

    return asyncio.run(run())


def _data_url(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


@pytest.fixture(scope="module")
def mcp_url(app_url: str) -> str:
    return app_url.rstrip("/") + "/gradio_api/mcp/"


def test_the_tool_is_listed_with_its_description_and_arguments_and_nothing_else(mcp_url: str):
    (listed,) = _session_call(mcp_url, [lambda s: s.list_tools()])
    tools = {t.name: t for t in listed.tools}
    assert list(tools) == ["analyse_slice"], "only the tool: /predict and the UI's events are not MCP tools"
    tool = tools["analyse_slice"]
    assert tool.description.startswith("Classify one brain MRI slice") and "not for diagnosis" in tool.description
    assert set(tool.inputSchema["properties"]) == {"image", "model", "images"}
    assert "data: URL" in tool.inputSchema["properties"]["image"]["description"]
    model_help = tool.inputSchema["properties"]["model"]["description"]  # whole, with this deployment's names
    assert "lite0_and_multitask" in model_help and "simple_cnn_7" in model_help and model_help.endswith(".")
    assert ",," not in tool.description
    assert "upload_file_to_gradio" not in tool.description  # Gradio's advice to upload first: this tool takes a data: URL
    assert ".." not in tool.description  # nor its full stop


def test_a_real_slice_gets_its_class_and_tumour_box_as_json_and_leaves_no_file(mcp_url: str):
    before = {p for p in gradio_cache_dir().rglob("*") if p.is_file()} if gradio_cache_dir().is_dir() else set()

    async def call(session):
        return await session.call_tool("analyse_slice", {"image": _data_url(SLICE)})

    (result,) = _session_call(mcp_url, [call])
    assert not result.isError, result.content
    (content,) = result.content
    answer = json.loads(content.text)
    assert answer["prediction"] == "glioma" and answer["looks_like_brain_mri"] is True
    assert answer["model"] == "lite0_and_multitask" and sum(answer["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    x0, y0, x1, y1 = answer["tumour_box"]
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and 0 < answer["tumour_area"] < 0.2
    assert len(answer["tumour_box_px"]) == 4 and "not for diagnosis" in answer["disclaimer"]
    assert "heatmap_png" not in answer and len(content.text) < 2000  # compact: no pictures unless asked
    after = {p for p in gradio_cache_dir().rglob("*") if p.is_file()}
    assert [p for p in after - before if p.read_bytes() == SLICE.read_bytes()] == [], "the upload outlived its request"


def test_pictures_come_only_when_asked_and_bad_input_is_a_clear_error(mcp_url: str):
    async def with_images(session):
        return await session.call_tool("analyse_slice", {"image": _data_url(SLICE), "model": "simple_cnn_7", "images": True})

    async def not_an_image(session):
        return await session.call_tool("analyse_slice", {"image": "data:image/jpeg;base64," + base64.b64encode(b"no").decode()})

    pictured, bad = _session_call(mcp_url, [with_images, not_an_image])
    answer = json.loads(pictured.content[0].text)
    assert answer["model"] == "simple_cnn_7" and answer["heatmap_png"].startswith("data:image/png;base64,")
    assert answer["tumour_mask_png"].startswith("data:image/png;base64,")
    assert bad.isError and "Traceback" not in bad.content[0].text
    assert bad.content[0].text.startswith("the data: URL is not an image this app can read")  # not Gradio's "file.jpg"


@pytest.mark.parametrize(
    "image, said",
    [
        ("", "no image given: send the slice as a data: URL"),
        ("data:image/png;base64,!!!notbase64", "the data: URL is not valid base64"),
        ("data:image/png;base64,@@@@", "the data: URL holds no bytes once decoded"),  # decoding skips what is not base64
        ("/home/patient-7731/slice.jpg", "the image must be a data: URL (data:image/jpeg;base64,...) or an http(s) URL"),
    ],
)
def test_an_image_argument_that_is_no_file_is_said_in_the_tools_terms_without_echoing_it(mcp_url: str, image: str, said: str):
    async def call(session):
        return await session.call_tool("analyse_slice", {"image": image})

    (result,) = _session_call(mcp_url, [call])
    text = result.content[0].text
    assert result.isError and text.startswith(said), text
    assert "Invalid" not in text and "patient-7731" not in text  # not Gradio's words, nor the caller's path back


def test_a_url_the_server_cannot_fetch_is_named_and_kept_out_of_the_log(mcp_url: str, capfd):
    # Offline here, so neither resolves; loopback would be refused too (Gradio's SSRF guard). Gradio fetches before the
    # tool runs: the caller used to read "the upstream Gradio app has raised an exception", and the log got the URL.
    async def unreachable(session):
        return await session.call_tool("analyse_slice", {"image": "https://scan-host.invalid/patient-7731.jpg"})

    (result,) = _session_call(mcp_url, [unreachable])
    text = result.content[0].text
    assert result.isError and "could not fetch the image from its URL" in text and "data: URL" in text, text
    assert "upstream Gradio app" not in text and "Traceback" not in text
    out, err = capfd.readouterr()
    assert "patient-7731" not in out + err and "scan-host.invalid" not in out + err, "the URL reached the server's log"
