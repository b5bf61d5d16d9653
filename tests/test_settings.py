"""Settings come from the environment when asked, not at import; every command's --data shares one default."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
from conftest import ROOT

from brainmri import settings
from brainmri.cli import add_data_argument, setup_logging
from train.config import TrainConfig, parse_config

VARIABLES = [
    "BRAIN_MRI_DATA",
    "BRAIN_MRI_CHECKPOINTS",
    "BRAIN_MRI_HUB_NAMESPACE",
    "HF_HUB_OFFLINE",
    "BRAIN_MRI_DEFAULT_MODEL",
    "BRAIN_MRI_THREADS",
    "BRAIN_MRI_MODEL_CACHE_MB",
    "BRAIN_MRI_MAX_BATCH",
    "BRAIN_MRI_WORKERS",
    "GRADIO_DEFAULT_CONCURRENCY_LIMIT",
    "GRADIO_TEMP_DIR",
    "BRAIN_MRI_DEVICE",
    "SPACES_ZERO_GPU",
    "BRAIN_MRI_OUTLINE_BF16",
    "BRAIN_MRI_SESSIONS",
]


@pytest.fixture
def clean_env(monkeypatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_without_the_environment(clean_env):
    assert settings.default_data() == str(ROOT.parent / "shared" / "data" / "brain-tumor-mri")  # from the repo, not the cwd
    assert settings.checkpoint_dir() == ROOT / "checkpoints"
    assert settings.hub_namespace() == "brain-mri"
    assert settings.hub_offline() is False and settings.default_model() is None and settings.torch_threads() is None
    assert settings.model_cache_mb() == 1024.0
    assert settings.max_batch() == 8 and settings.concurrency_limit() == 16 and settings.batch_workers() == 2
    assert settings.gradio_temp_dir().name == "gradio" and settings.gradio_temp_dir().is_absolute()
    assert settings.serving_device() == "auto" and settings.on_zerogpu() is False
    assert settings.outline_bf16() is True and settings.session_capacity() == 256


def test_each_variable_is_read_when_asked(clean_env, tmp_path: Path):
    values = {
        "BRAIN_MRI_DATA": "someone/dataset",
        "BRAIN_MRI_CHECKPOINTS": str(tmp_path),
        "BRAIN_MRI_HUB_NAMESPACE": "a-fork",
        "HF_HUB_OFFLINE": "1",
        "BRAIN_MRI_DEFAULT_MODEL": "simple_cnn_7",
        "BRAIN_MRI_THREADS": "3",
        "BRAIN_MRI_MODEL_CACHE_MB": "64.5",
        "BRAIN_MRI_MAX_BATCH": "4",
        "BRAIN_MRI_WORKERS": "3",
        "GRADIO_TEMP_DIR": str(tmp_path / "uploads"),
        "BRAIN_MRI_SESSIONS": "50",
    }
    for name, value in values.items():
        clean_env.setenv(name, value)
    assert settings.default_data() == "someone/dataset" and settings.checkpoint_dir() == tmp_path
    assert settings.hub_namespace() == "a-fork" and settings.hub_offline() is True
    assert settings.default_model() == "simple_cnn_7" and settings.torch_threads() == 3
    assert settings.model_cache_mb() == 64.5 and settings.max_batch() == 4 and settings.batch_workers() == 3
    assert settings.concurrency_limit() == 8  # twice the batch unless set itself
    assert settings.session_capacity() == 50
    clean_env.setenv("GRADIO_DEFAULT_CONCURRENCY_LIMIT", "2")
    assert settings.concurrency_limit() == 2
    assert settings.gradio_temp_dir() == (tmp_path / "uploads").resolve()
    clean_env.setenv("BRAIN_MRI_HUB_NAMESPACE", "  ")  # blank is unset
    assert settings.hub_namespace() == "brain-mri"
    clean_env.setenv("BRAIN_MRI_DEVICE", "CUDA:1")
    assert settings.serving_device() == "cuda:1"
    clean_env.setenv("BRAIN_MRI_OUTLINE_BF16", "0")
    assert settings.outline_bf16() is False


def test_zerogpu_serves_each_request_alone(clean_env):
    """On ZeroGPU each request takes its own GPU lease (docs/space.md): no batch, one worker, unless set."""
    clean_env.setenv("SPACES_ZERO_GPU", "true")
    assert settings.on_zerogpu() and settings.max_batch() == 1 and settings.batch_workers() == 1
    clean_env.setenv("BRAIN_MRI_MAX_BATCH", "4")
    assert settings.max_batch() == 4


@pytest.mark.parametrize(
    ("name", "value", "read"),
    [
        ("BRAIN_MRI_MAX_BATCH", "0", settings.max_batch),
        ("BRAIN_MRI_MAX_BATCH", "eight", settings.max_batch),
        ("BRAIN_MRI_THREADS", "-1", settings.torch_threads),
        ("BRAIN_MRI_WORKERS", "0", settings.batch_workers),
        ("BRAIN_MRI_MODEL_CACHE_MB", "lots", settings.model_cache_mb),
        ("GRADIO_DEFAULT_CONCURRENCY_LIMIT", "2.5", settings.concurrency_limit),
        ("BRAIN_MRI_DEVICE", "gpu", settings.serving_device),
        ("BRAIN_MRI_DEVICE", "cuda:x", settings.serving_device),
        ("BRAIN_MRI_OUTLINE_BF16", "yes", settings.outline_bf16),
        ("BRAIN_MRI_SESSIONS", "0", settings.session_capacity),
    ],
)
def test_a_bad_value_is_an_error_naming_the_variable(clean_env, name: str, value: str, read):
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}.*'{value}'"):
        read()


def test_data_argument_and_train_config_share_the_default(clean_env):
    parser = argparse.ArgumentParser()
    add_data_argument(parser)
    assert parser.parse_args([]).data == settings.default_data() == TrainConfig().data == parse_config([]).data
    clean_env.setenv("BRAIN_MRI_DATA", "elsewhere")
    parser = argparse.ArgumentParser()
    add_data_argument(parser)
    assert parser.parse_args([]).data == TrainConfig().data == parse_config([]).data == "elsewhere"
    assert parser.parse_args(["--data", "given"]).data == parse_config(["--data", "given"]).data == "given"
    assert TrainConfig(data="saved").data == "saved"  # a saved train_config.json still reads back as it was


def test_data_argument_that_overrides_has_no_default():
    parser = argparse.ArgumentParser()
    add_data_argument(parser, overrides="the config's")
    assert parser.parse_args([]).data is None and parser.parse_args(["--data", "x"]).data == "x"


def test_setup_logging_quiets_the_chatty_libraries():
    setup_logging()
    assert all(logging.getLogger(name).level == logging.WARNING for name in ("accelerate", "httpx", "timm"))


def test_the_environment_is_read_in_one_place():
    """Every environment variable the product reads goes through brainmri.settings (so the README's table is whole),
    and nothing calls logging.basicConfig but setup_logging."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    packages = ("brainmri", "train", "reports", "ops")
    files = [root / "app.py", *(f for pkg in packages for f in sorted((root / pkg).rglob("*.py")))]
    offenders = []
    for path in files:
        if path.name in ("settings.py", "cli.py") and path.parent.name == "brainmri":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and (node.attr in ("environ", "getenv") or node.attr == "basicConfig"):
                offenders.append(f"{path.relative_to(root)}:{node.lineno} {node.attr}")
    assert offenders == []
