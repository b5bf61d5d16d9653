"""Uploads do not outlive their request and are never logged; heatmaps never touch the disk.

The API path runs through the launched app; the UI path (a new upload, then re-runs from the
session's memory) calls the app's own handlers; tests/test_browser.py walks the UI in Chromium
and makes the same checks on the server's folders.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image
from traces import files_containing, files_named, files_since

from brainmri.app import display
from brainmri.app.compare_tab import compare
from brainmri.app.comparison import ENSEMBLE
from brainmri.app.inline_media import send_inline
from brainmri.app.uploads import discard_upload, gradio_cache_dir, kept_in_cache
from brainmri.data.imageio import load_image
from brainmri.rendering import data_url, decode_data_url


@pytest.fixture
def own() -> Path:
    """The test's own folder for the files it uploads: skipped by the searches."""
    folder = Path(tempfile.mkdtemp(prefix="hygiene-")).resolve()
    yield folder
    shutil.rmtree(folder)


def unique_png(folder: Path, name: str) -> tuple[Path, bytes]:
    """A PNG of random noise (unique bytes, findable anywhere) and its raw pixels."""
    noise = np.random.default_rng(uuid.uuid4().int).integers(0, 256, (96, 96), dtype=np.uint8)
    path = folder / name
    Image.fromarray(noise).save(path)
    return path, noise.tobytes()


def assert_no_trace(secret: str, needles: list[bytes], t0: float, own: Path) -> None:
    roots = sorted({gradio_cache_dir(), Path(tempfile.gettempdir()).resolve()})
    for needle in needles:
        assert files_containing(needle, roots, skip=own) == [], "an upload outlived its request"
    assert files_named(secret, roots, skip=own) == []
    if gradio_cache_dir().is_dir():
        assert files_since(t0, gradio_cache_dir(), skip=own) == [], "the run left files in Gradio's cache"


def test_api_leaves_no_upload_no_heatmap_and_logs_nothing(client, own, caplog, capfd):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    caplog.set_level(logging.DEBUG)
    secret = f"patient-{uuid.uuid4().hex}"
    good, noise = unique_png(own, f"{secret}.png")
    bad = own / f"{secret}-bad.png"
    bad.write_bytes(b"not an image " + noise)
    slice_ = Path(shutil.copy(Path(__file__).parent.parent / "examples" / "glioma_1.jpg", own / f"{secret}-slice.jpg"))
    t0 = time.time()
    for model in ("simple_cnn_7", "tf_efficientnet_lite0"):
        heatmap = client.predict(handle_file(str(slice_)), model, api_name="/predict")[1]
        assert heatmap["path"] is None and heatmap["url"].startswith("data:image/png")  # inline: no file on the server
        # the noise, unique bytes to search for, is flagged by the OOD check: no heatmap at all
        assert client.predict(handle_file(str(good)), model, api_name="/predict")[1] is None
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(str(bad)), api_name="/predict")

    assert_no_trace(secret, [good.read_bytes()[-4096:], noise[:4096]], t0, own)
    out, err = capfd.readouterr()
    assert secret not in caplog.text + out + err, "an upload's name reached the logs"


def test_the_session_keeps_no_copy_of_a_request(client, app_url, own):
    """Gradio copies a request's values into its session (the upload's path and name, the pictures, the details) and
    its deep-link route writes them to a file: here the session keeps none of them, so nothing of an upload outlives
    its answer there either (brainmri.app.gradio_costs)."""
    import json

    import requests
    from gradio_client import handle_file

    import app

    secret = f"patient-{uuid.uuid4().hex}"
    slice_ = Path(shutil.copy(Path(__file__).parent.parent / "examples" / "glioma_1.jpg", own / f"{secret}.jpg"))
    details = client.predict(handle_file(str(slice_)), "simple_cnn_7", api_name="/predict")[2]
    assert details["prediction"]  # a real answer came back...
    session = app.demo.state_holder.session_data[client.session_hash]
    kept = json.dumps(list(session.components), default=str)
    assert secret not in kept and "data:image" not in kept  # ...and neither its name nor a picture of it stayed
    link = requests.get(f"{app_url}gradio_api/deep_link", params={"session_hash": client.session_hash}, timeout=30)
    assert link.status_code == 200
    written = list(gradio_cache_dir().rglob("deep_links/*/state.json"))
    assert written and not any(secret.encode() in f.read_bytes() or b"data:image" in f.read_bytes() for f in written)
    for f in written:
        shutil.rmtree(f.parent)


def as_gradio_upload(source: Path) -> Path:
    """Place a file in Gradio's cache the way its upload route does: a folder of its own."""
    folder = gradio_cache_dir() / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return Path(shutil.copy(source, folder / source.name))


def test_ui_upload_is_deleted_once_decoded_and_reruns_use_memory(own, caplog):
    import app

    caplog.set_level(logging.DEBUG)
    secret = f"patient-{uuid.uuid4().hex}"
    good, noise = unique_png(own, f"{secret}.png")
    t0 = time.time()
    upload = as_gradio_upload(good)
    cleared, *shown = app.classify_upload(str(upload), "simple_cnn_7", "Grad-CAM", 0.5)
    shown = display.ClassifyView(*shown)
    assert not upload.exists() and not upload.parent.exists()
    assert cleared is None  # the upload box is emptied: no link to the deleted file, ready for the next upload
    heatmap, session = shown.heatmap, shown.session
    assert session.image.size == (96, 96) and shown.image is session.image and shown.details["model"] == "simple_cnn_7"
    assert not shown.details["in_distribution"] and heatmap is None and shown.key == ""  # noise: no heatmap over it

    # A changed model, method or opacity, and Compare, run from the session alone: the file is gone.
    again = app.classify(session, "tf_efficientnet_lite0", "HiResCAM", 0.5)
    assert again.details["model"] == "tf_efficientnet_lite0" and not again.details["in_distribution"]  # rerun, judged again
    assert app.reblend(again.session, 0.2) is None  # still no heatmap to blend
    assert app.reblend(session._replace(heatmap=np.full((96, 96), 0.5, np.float32)), 0.2).size == (96, 96)
    warmed = set()
    table, grid, agreement, _ = compare(app.PREDICTOR, warmed, again.session, "Grad-CAM", None)  # nothing ticked: every model
    assert grid.count("<figure") == len(app.PREDICTOR.single_models) and "agree" in agreement  # an ensemble: as its members
    assert warmed == {(n, "Grad-CAM") for n in app.PREDICTOR.single_models}  # each model's first pass untimed, once
    assert f"{len(warmed)} of them run once first to warm up" in agreement  # and the time taken says so
    table, grid, agreement, _ = compare(app.PREDICTOR, warmed, again.session, "Grad-CAM", ["simple_cnn_7", "tf_efficientnet_lite0"])
    rows = re.findall(r'<th scope="row">(.*?)</th>', table.replace("<wbr>", ""))
    assert rows == [ENSEMBLE, "tf_efficientnet_lite0", "simple_cnn_7"] and grid.count("<figure") == 2  # the list's order
    assert grid.index("tf_efficientnet_lite0") < grid.index("simple_cnn_7")  # the heatmaps in the same order
    assert "data:image/jpeg;base64," in grid and "/gradio_api/file=" not in grid  # heatmaps inline, no file
    assert "2 models in" in agreement and " s." in agreement and "warm up" not in agreement  # the time it took, both warm
    assert app.classify(None, "simple_cnn_7", "Grad-CAM", 0.5) == app.EMPTY

    # A broken upload is deleted too, and its clear error stays in the result area (a toast would fade).
    bad = own / f"{secret}-bad.png"
    bad.write_bytes(b"not an image " + noise)
    broken = as_gradio_upload(bad)
    cleared, *shown = app.classify_upload(str(broken), "simple_cnn_7", "Grad-CAM", 0.5)
    shown = display.ClassifyView(*shown)
    assert "Could not classify" in shown.summary and "not an image" in shown.summary and shown.heatmap is None
    assert not broken.exists()

    # What the heatmap outputs send: data URLs, no path.
    sent = send_inline(gr.Image(type="pil", format="png")).postprocess(app.reblend(session._replace(heatmap=np.ones((96, 96))), 0.5))
    assert sent.path is None and decode_data_url(sent.url).size == (96, 96)
    assert_no_trace(secret, [good.read_bytes()[-4096:], noise[:4096]], t0, own)
    assert secret not in caplog.text


def test_an_example_is_classified_without_touching_its_cached_thumbnail(client):
    """Clicking an example classifies it; sending an example's very bytes and name through the API (Gradio files it
    at the thumbnail's path) deletes nothing the app keeps."""
    from gradio_client import handle_file

    import app

    kept = kept_in_cache(app.demo)
    assert app.examples() and len(kept) >= len(app.examples())  # the thumbnails, cached for good at build time
    shown = app.classify_example("simple_cnn_7", "Grad-CAM", 0.5, True, gr.SelectData(None, {"index": 0, "value": None}))
    assert shown.image.size == load_image(app.examples()[0][0]).size and shown.details["model"] == "simple_cnn_7"
    assert shown.session.heatmap is not None
    client.predict(handle_file(app.examples()[0][0]), "simple_cnn_7", api_name="/predict")
    assert all(p.is_file() for p in kept)


def test_inline_images_round_trip_and_refuse_what_is_not_one():
    image = Image.fromarray(np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3))
    for fmt in ("png", "webp"):  # both lossless
        assert np.array_equal(np.asarray(decode_data_url(data_url(image, fmt)).convert("RGB")), np.asarray(image))
    with pytest.raises(ValueError, match="cannot inline"):
        data_url(image, "gif")
    with pytest.raises(ValueError, match="not a base64 image data URL"):
        decode_data_url("/gradio_api/file=/tmp/x.png")
    with pytest.raises(TypeError, match="takes a gr.Image"):
        send_inline(gr.Gallery())


def test_discard_upload_touches_only_gradio_cache(tmp_path: Path):
    outside = tmp_path / "mine.png"
    outside.write_bytes(b"x")
    discard_upload(outside)
    assert outside.exists()
    folder = gradio_cache_dir() / f"test-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    (folder / "up.png").write_bytes(b"x")
    (folder / "kept.png").write_bytes(b"x")
    discard_upload(folder / "kept.png", keep={(folder / "kept.png").resolve()})
    assert (folder / "kept.png").exists()
    discard_upload(folder / "up.png")
    assert folder.exists() and not (folder / "up.png").exists()  # the folder stays while something is in it
    discard_upload(folder / "kept.png")
    assert not folder.exists()
    discard_upload(None)


def test_identical_uploads_are_deleted_by_the_last_request_that_needs_them(tmp_path, monkeypatch):
    """Gradio files identical uploads under one path: with two pending, the first release keeps the file."""
    from brainmri.app.uploads import PendingUploads, discard_upload, gradio_cache_dir

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    file = gradio_cache_dir() / "0123abcd" / "slice.png"
    file.parent.mkdir(parents=True)
    file.write_bytes(b"png bytes")
    pending = PendingUploads()
    pending.update([str(file)])
    pending.update([str(file)])  # a second client sent the same bytes: same path
    assert str(file) in pending  # still a set for Gradio's own checks
    discard_upload(str(file), pending=pending)
    assert file.is_file()  # the other request has not read it yet
    discard_upload(str(file), pending=pending)
    assert not file.exists() and not file.parent.exists()
    assert str(file) not in pending and not pending  # its name does not stay behind in memory


def test_an_abandoned_upload_swept_by_gradio_is_forgotten(tmp_path, monkeypatch):
    """An upload whose request never ran (queue full, client gone) is removed by Gradio's cache sweep; its count goes
    with it, so the next upload of the same bytes is deleted by its own request."""
    from brainmri.app.uploads import PendingUploads, discard_upload, gradio_cache_dir

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    file = gradio_cache_dir() / "0123abcd" / "slice.png"
    file.parent.mkdir(parents=True)
    file.write_bytes(b"png bytes")
    pending = PendingUploads()
    pending.update([str(file)])  # abandoned
    file.unlink()
    pending -= {str(file)}  # what Gradio's sweep (route_utils.delete_files_created_by_app) does
    assert isinstance(pending, PendingUploads) and not pending
    pending.update(["a", "b"])
    walk = iter(pending)  # the sweep's walk (in a worker thread) is over a copy: a release meanwhile cannot break it
    pending.release(Path("a").resolve())
    assert sorted(walk) == ["a", "b"] and set(pending) == {"b"}
    pending -= {"b"}
    file.write_bytes(b"png bytes")
    pending.update([str(file)])  # the same bytes again, later
    discard_upload(str(file), pending=pending)
    assert not file.exists()


def test_an_mcp_staged_copy_is_deleted_by_the_last_request_with_its_bytes(tmp_path, monkeypatch):
    """Two MCP calls with the same data: URL share one staged copy: the first to finish leaves it for the second; one
    whose request never ran is left to Gradio's cache sweep, whose set it is in."""
    from brainmri.app import tool
    from brainmri.app.uploads import PendingUploads, gradio_cache_dir

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    monkeypatch.setattr(tool, "_STAGED", PendingUploads())
    staged = gradio_cache_dir() / "feed" / "image.jpg"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"jpeg bytes")
    upload = tmp_path / "upload.jpg"
    upload.write_bytes(b"jpeg bytes")
    tool._STAGED.add(staged.resolve())
    tool._STAGED.add(staged.resolve())  # the same bytes, staged again by a second call
    assert tool.staged_copies(upload) == [staged.resolve()] and tool.staged_copies(tmp_path / "missing.jpg") == []
    tool.release_staged(tool.staged_copies(upload))
    assert staged.is_file()  # the second call has not uploaded it yet
    tool.release_staged(tool.staged_copies(upload))
    assert not staged.exists() and not tool._STAGED

    class Blocks:  # what track_mcp_staging reads of a launched app
        temp_file_sets = [set()]
        mcp_server_obj = type("Server", (), {"convert_strings_to_filedata": staticmethod(lambda value, positions: value)})()

    blocks = Blocks()
    tool.track_mcp_staging(blocks)
    tool.track_mcp_staging(blocks)
    assert [s for s in blocks.temp_file_sets if s is tool._STAGED] == [tool._STAGED]  # in Gradio's sweep, once


def test_a_file_fetched_from_a_url_is_counted_like_an_upload(tmp_path, monkeypatch):
    """Two API calls naming one URL share its cache path: the first to finish leaves the file to the second."""
    import asyncio

    from brainmri.app.uploads import PendingUploads, discard_upload, fetch_errors_named, gradio_cache_dir

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    fetched = gradio_cache_dir() / "beef" / "slice.jpg"
    fetched.parent.mkdir(parents=True)
    fetched.write_bytes(b"jpeg bytes")
    box = gr.File(visible=False)

    async def gradios_fetch(url_or_file_path):  # what Gradio does for a URL: download into its cache, give the path
        return str(fetched)

    box.async_move_resource_to_block_cache = gradios_fetch
    pending = PendingUploads()
    fetch_errors_named(box, lambda: pending)
    for _ in range(2):
        assert asyncio.run(box.async_move_resource_to_block_cache("https://example.org/slice.jpg")) == str(fetched)
    discard_upload(str(fetched), pending=pending)
    assert fetched.is_file()  # the second call has not read it yet
    discard_upload(str(fetched), pending=pending)
    assert not fetched.exists()


def test_a_staged_data_url_is_named_so_in_errors_and_keeps_its_suffix_for_its_format(tmp_path):
    """Gradio stages a data: URL as "file.<type>": a message says "the data: URL", while ".dcm" still tells that a
    DICOM without its preamble is one."""
    from upload_samples import dicom

    from brainmri.app.tool import DATA_URL, load_image_named

    bare = dicom(Image.new("RGB", (64, 64), (100, 100, 100)))[132:]  # no preamble, no "DICM": known by its suffix alone
    (tmp_path / "file.dcm").write_bytes(bare)
    (tmp_path / "file.jpg").write_bytes(bare)
    assert load_image_named(str(tmp_path / "file.dcm"), DATA_URL).size == (64, 64)
    with pytest.raises(ValueError, match=r"^the data: URL is not an image this app can read") as caught:
        load_image_named(str(tmp_path / "file.jpg"), DATA_URL)
    assert "file.jpg" not in str(caught.value)
    with pytest.raises(ValueError, match=r"^file\.jpg is not an image"):  # a plain upload keeps its own name
        load_image_named(str(tmp_path / "file.jpg"), None)
