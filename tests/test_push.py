"""ops.push, offline: HfApi is replaced by a recorder, so these assert what would be uploaded where."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import httpx
import huggingface_hub.constants
import pytest
from conftest import ROOT, write_checkpoint

from brainmri import settings
from ops import push

TOKEN = "hf_TESTtokenNEVERtoBEseen0123456789"


class RecordingApi:
    """Stands in for huggingface_hub.HfApi; keeps the calls."""

    instances: list[RecordingApi] = []
    unreachable = False  # whoami raises as with no network

    def __init__(self, token=None, **kwargs):
        self.token = token
        self.calls: list[tuple[str, tuple, dict]] = []
        self.staged: dict[str, bytes] = {}  # what upload_folder found in its folder: relative path -> bytes
        RecordingApi.instances.append(self)

    def whoami(self):  # the reachability check: not recorded as a call, it sends nothing
        if RecordingApi.unreachable:
            raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")
        return {"name": "me"}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", (repo_id,), kwargs))

    def add_space_variable(self, repo_id, key, value, **kwargs):
        self.calls.append(("add_space_variable", (repo_id, key, value), kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", (), kwargs))
        folder = Path(kwargs["folder_path"])
        self.staged = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def api(monkeypatch) -> type[RecordingApi]:
    RecordingApi.instances = []
    RecordingApi.unreachable = False
    monkeypatch.setattr(push, "HfApi", RecordingApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return RecordingApi


def make_checkpoint(folder: Path) -> Path:
    """A checkpoint folder with a card and metrics, plus what must not be pushed."""
    write_checkpoint(folder)
    (folder / "README.md").write_text("---\nlibrary_name: timm\n---\n")
    (folder / "metrics.json").write_text("{}\n")
    (folder / "best.safetensors").write_bytes(b"leftover")
    (folder / "resume").mkdir()
    (folder / "resume" / "state.json").write_text("{}")
    (folder / ".DS_Store").write_bytes(b"")
    return folder


def assert_token_nowhere(caplog, capsys, *folders: Path) -> None:
    captured = capsys.readouterr()
    assert TOKEN not in caplog.text + captured.out + captured.err
    for folder in folders:
        for f in folder.rglob("*"):
            assert not f.is_file() or TOKEN.encode() not in f.read_bytes(), f"token written to {f}"


def test_push_one_folder(api, tmp_path, caplog, capsys):
    folder = make_checkpoint(tmp_path / "simple_cnn_7")
    with caplog.at_level(logging.DEBUG):
        assert push.main([str(folder), "--repo-id", "someone/brain-cnn"]) == 0
    (instance,) = api.instances
    assert instance.token == TOKEN  # from HF_TOKEN
    (create, upload) = instance.calls
    assert create == ("create_repo", ("someone/brain-cnn",), {"private": False, "exist_ok": True})
    assert upload[2]["repo_id"] == "someone/brain-cnn" and Path(upload[2]["folder_path"]) == folder
    assert sorted(upload[2]["allow_patterns"]) == ["README.md", "config.json", "manifest.json", "metrics.json", "model.safetensors"]
    assert upload[2]["delete_patterns"] == "*"  # the repo becomes the folder: no file of an earlier push stays
    assert "token" not in upload[2]  # only HfApi holds it
    assert_token_nowhere(caplog, capsys, folder)


def test_push_all_uses_namespace_and_folder_names(api, tmp_path, caplog, capsys):
    root = tmp_path / "checkpoints"
    for name in ("simple_cnn_7", "tf_efficientnet_lite0"):
        make_checkpoint(root / name)
    (root / "notes").mkdir()  # no config.json: not a checkpoint
    with caplog.at_level(logging.DEBUG):
        assert push.main(["--all", "--namespace", "me", "--root", str(root), "--private"]) == 0
    (instance,) = api.instances
    creates = [c for c in instance.calls if c[0] == "create_repo"]
    uploads = [c[2] for c in instance.calls if c[0] == "upload_folder"]
    assert [c[1][0] for c in creates] == ["me/simple_cnn_7", "me/tf_efficientnet_lite0"]
    assert all(c[2]["private"] and c[2]["exist_ok"] for c in creates)
    assert [(u["repo_id"], Path(u["folder_path"]).name) for u in uploads] == [
        ("me/simple_cnn_7", "simple_cnn_7"),
        ("me/tf_efficientnet_lite0", "tf_efficientnet_lite0"),
    ]
    assert_token_nowhere(caplog, capsys, root)


def test_token_from_cached_login(api, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.delenv("HF_TOKEN")
    token_file = tmp_path / "hf" / "token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(token_file))
    folder = make_checkpoint(tmp_path / "m")
    with caplog.at_level(logging.DEBUG):
        assert push.main([str(folder), "--repo-id", "me/m"]) == 0
    assert api.instances[0].token == TOKEN
    assert_token_nowhere(caplog, capsys, folder)


def test_no_token_stops_before_any_upload(api, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token_here"))
    assert push.main([str(make_checkpoint(tmp_path / "m")), "--repo-id", "me/m"]) == 2
    assert "no Hugging Face token" in caplog.text
    assert api.instances == []


def test_dry_run_needs_no_token(api, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("HF_TOKEN")
    with caplog.at_level(logging.INFO):
        assert push.main([str(make_checkpoint(tmp_path / "m")), "--dry-run"]) == 0
    assert api.instances == []
    assert f"-> {settings.hub_namespace()}/m" in caplog.text and "model.safetensors" in caplog.text


@pytest.mark.parametrize("problem", ["tampered", "no card", "bad repo id", "not a checkpoint"])
def test_bad_folder_or_repo_id_is_refused(api, tmp_path, caplog, problem):
    folder = make_checkpoint(tmp_path / "m")
    repo_id, needle = "me/m", ""
    if problem == "tampered":
        (folder / "config.json").write_text((folder / "config.json").read_text().replace("glioma", "glioma2"))
        needle = "config.json does not match"
    elif problem == "no card":
        (folder / "README.md").unlink()
        needle = "README.md"
    elif problem == "bad repo id":
        repo_id, needle = "no-owner", "OWNER/NAME"
    else:
        folder, needle = tmp_path / "empty", "missing config.json"
        folder.mkdir()
    assert push.main([str(folder), "--repo-id", repo_id]) == 2
    assert needle in caplog.text
    assert all(c[0] != "upload_folder" for inst in api.instances for c in inst.calls)


# ---------------------------------------------------------------- the Space


def test_the_space_sends_exactly_the_allow_list(api, caplog, capsys):
    with caplog.at_level(logging.INFO):
        assert push.main(["--space", "me/brain-mri", "--namespace", "me"]) == 0
    (instance,) = api.instances
    (create, variable, upload) = instance.calls
    assert create == ("create_repo", ("me/brain-mri",), {"repo_type": "space", "space_sdk": "gradio", "private": False, "exist_ok": True})
    assert variable[:2] == ("add_space_variable", ("me/brain-mri", "BRAIN_MRI_HUB_NAMESPACE", "me"))  # it pulls me/<model>
    kwargs = upload[2]
    assert kwargs["repo_id"] == "me/brain-mri" and kwargs["repo_type"] == "space" and kwargs["delete_patterns"] == "*"
    sent = set(instance.staged)
    assert sent == set(kwargs["allow_patterns"])  # the staging folder holds exactly the allow-list
    expected = {"app.py", "requirements.txt", "README.md", ".gitattributes"}
    expected |= {p.relative_to(ROOT).as_posix() for d in ("brainmri", "examples", "results") for p in (ROOT / d).rglob("*") if p.is_file()}
    expected = {f for f in expected if "__pycache__" not in f and not f.endswith(".pyc")}
    for folder in push.checkpoints_to_push(ROOT / "checkpoints"):
        expected |= {f"checkpoints/{folder.name}/{n}" for n in push.files_to_upload(folder)}
    assert sent == expected
    assert {f"checkpoints/{n}/model.safetensors" for n in ("tf_efficientnet_lite0", "simple_cnn_7")} <= sent
    assert not [f for f in sent if f.split("/")[0] in {"tests", "train", "scripts", "data", "docs", "runs"}]  # no tests, training, data
    assert not [f for f in sent if "/resume/" in f or f.endswith(("best.safetensors", ".pyc"))]
    readme = instance.staged["README.md"].decode()
    assert "\n  - me/tf_efficientnet_lite0\n" in readme and "brain-mri/tf_efficientnet_lite0" not in readme  # --namespace's ids
    assert (
        instance.staged["checkpoints/tf_efficientnet_lite0/model.safetensors"]
        == (ROOT / "checkpoints/tf_efficientnet_lite0/model.safetensors").read_bytes()
    )
    assert_token_nowhere(caplog, capsys)


def _caught(files: list[str]) -> list[str]:
    return [f for f in files if push.hub_would_refuse(ROOT / f)]


def test_every_file_the_hub_would_refuse_outside_lfs_is_stored_in_lfs():
    files = push.space_files(ROOT)
    caught = _caught(files)
    assert "checkpoints/tf_efficientnet_lite0/model.safetensors" in caught  # 1 MB+ binaries are there to catch
    assert push.not_in_lfs(ROOT, files) == []


def test_the_lfs_check_fails_without_gitattributes(tmp_path):
    """The same files in a fresh work tree: every one the Hub would refuse is caught without .gitattributes, none with it."""
    caught = _caught(push.space_files(ROOT))
    for name in caught:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, tmp_path / name)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert push.not_in_lfs(tmp_path, caught) == caught
    shutil.copyfile(ROOT / ".gitattributes", tmp_path / ".gitattributes")
    assert push.not_in_lfs(tmp_path, caught) == []


def test_a_file_the_hub_would_refuse_stops_the_push_before_any_upload(api, tmp_path, caplog, monkeypatch):
    for name in push.SPACE_FILES:
        shutil.copyfile(ROOT / name, tmp_path / name)
    write_checkpoint(tmp_path / "checkpoints" / "simple_cnn_7")
    (tmp_path / "checkpoints" / "simple_cnn_7" / "README.md").write_text("card\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "scan.raw").write_bytes(b"\0" * 1_500_000)  # a binary kind .gitattributes does not know
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    with pytest.raises(ValueError, match=r"add their kind to .gitattributes: results/scan.raw"):
        push.push_space(api(), "me/s", "me", root=tmp_path)
    assert all(c[0] != "upload_folder" for inst in api.instances for c in inst.calls)


@pytest.mark.parametrize("problem", ["no token", "Hub out of reach"])
def test_the_space_stops_saying_which_before_anything_is_sent(api, tmp_path, monkeypatch, caplog, problem):
    if problem == "no token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token_here"))
        needle = "no Hugging Face token"
    else:
        api.unreachable = True
        needle = "the Hub is out of reach (ConnectError"
    assert push.main(["--space", "me/brain-mri"]) == 2
    assert needle in caplog.text
    assert all(not inst.calls for inst in api.instances)  # no repo made, nothing uploaded


def test_the_space_dry_run_lists_the_files_and_needs_no_token(api, monkeypatch, caplog):
    monkeypatch.delenv("HF_TOKEN")
    with caplog.at_level(logging.INFO):
        assert push.main(["--space", "me/brain-mri", "--dry-run"]) == 0
    assert api.instances == [] and "-> Space me/brain-mri:" in caplog.text
    assert "checkpoints/tf_efficientnet_lite0/model.safetensors" in caplog.text


def _front_matter(text: str | None = None) -> dict:
    import yaml

    text = (ROOT / "README.md").read_text() if text is None else text
    assert text.startswith("---\n"), "README.md must open with the Space's front matter"
    return yaml.safe_load(text.split("---\n")[1])


def test_the_front_matter_matches_what_is_tested_and_pushed():
    import gradio

    front = _front_matter()
    assert front["python_version"] == "3.12"  # ZeroGPU's; CI runs 3.11, the GPU lease 3.12 (tests/test_space_stack.py)
    assert front["sdk"] == "gradio" and front["sdk_version"] == gradio.__version__ and front["app_file"] == "app.py"
    assert 0 < len(front["short_description"]) <= 60
    shipped = sorted(f.name for f in push.checkpoints_to_push(ROOT / "checkpoints"))
    assert sorted(front["models"]) == [f"{settings.hub_namespace()}/{n}" for n in shipped]  # the push's default namespace
    rewritten = push.with_models((ROOT / "README.md").read_text(), shipped, "someone")
    assert _front_matter(rewritten)["models"] == [f"someone/{n}" for n in shipped]
