"""The stack a ZeroGPU Space runs: the front matter's Python, requirements.txt's torch and gradio, and app.py's imports.

ZeroGPU's documented stack (hub-docs docs/hub/spaces-zerogpu.md, 2026-08): Python 3.10.13 or 3.12.12; PyTorch 2.8.0,
2.9.1, 2.10.0 or 2.11.0; Gradio 4 or newer. A Gradio Space installs gradio at the front matter's ``sdk_version`` and the
``spaces`` package by itself (requirements.txt says why it pins one and not the other). CI runs Python 3.11, so what
only 3.12 shows runs in the GPU lease (scripts/device_sweep.sh; docs/space.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib import metadata

import yaml
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ZEROGPU_PYTHON = {"3.10", "3.12"}
ZEROGPU_TORCH = {"2.8.0": "0.23.0", "2.9.1": "0.24.1", "2.10.0": "0.25.0", "2.11.0": "0.26.0"}  # torch -> its torchvision


def front_matter() -> dict:
    return yaml.safe_load((ROOT / "README.md").read_text().split("---\n")[1])


def requirements() -> dict[str, Requirement]:
    lines = (line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines())
    reqs = [Requirement(line) for line in lines if line and not line.startswith("-")]
    return {r.name.lower().replace("_", "-"): r for r in reqs}


def pinned(req: Requirement) -> str | None:
    return next((s.version for s in req.specifier if s.operator == "=="), None)


def test_the_spaces_python_is_one_zerogpu_runs_and_every_pinned_package_supports_it():
    python = front_matter()["python_version"]
    assert python in ZEROGPU_PYTHON, f"python_version {python!r} is not on ZeroGPU's list {sorted(ZEROGPU_PYTHON)}"
    for name, req in requirements().items():
        version = pinned(req)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if version is None or dist.version != version:
            continue  # Requires-Python is read from the installed copy, so only where it is the pinned one
        needs = dist.metadata.get("Requires-Python")
        assert not needs or SpecifierSet(needs).contains(f"{python}.0"), f"{name}=={version} needs Python {needs}"


def test_numpy_and_pandas_rule_out_python_310_and_the_package_says_so():
    needs = {name: metadata.distribution(name).metadata["Requires-Python"] for name in ("numpy", "pandas")}
    reqs = requirements()
    assert pinned(reqs["numpy"]) == metadata.version("numpy") and pinned(reqs["pandas"]) == metadata.version("pandas")
    assert all(not SpecifierSet(spec).contains("3.10.13") for spec in needs.values()), needs
    declared = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    assert not declared.contains("3.10.13") and declared.contains("3.11.0") and declared.contains("3.12.12"), declared


def test_torch_is_pinned_to_a_zerogpu_version_with_its_own_torchvision():
    reqs = requirements()
    torch_version, vision_version = pinned(reqs["torch"]), pinned(reqs["torchvision"])
    assert torch_version in ZEROGPU_TORCH, f"torch=={torch_version} is not on ZeroGPU's list {sorted(ZEROGPU_TORCH, key=Version)}"
    assert vision_version == ZEROGPU_TORCH[torch_version]


def test_gradio_is_the_sdk_version_with_the_mcp_extra_and_spaces_is_left_to_the_platform():
    reqs = requirements()
    assert pinned(reqs["gradio"]) == str(front_matter()["sdk_version"]) and reqs["gradio"].extras == {"mcp"}
    assert Version(pinned(reqs["gradio"])).major >= 4
    assert str(reqs["spaces"].specifier) == "", "ZeroGPU installs its own spaces: a pin here would fight it"


def test_app_imports_spaces_before_anything_imports_torch():
    """ZeroGPU's ``spaces`` must come before torch (it patches torch's CUDA on import). sys.modules keeps insertion
    order, and a module is inserted before its body runs, so the index says which import started first."""
    code = "import sys, app; names = list(sys.modules); print(names.index('spaces'), names.index('torch'))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BRAIN_MRI_DEVICE": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    spaces_at, torch_at = map(int, done.stdout.split()[-2:])
    assert spaces_at < torch_at


def test_nothing_served_calls_torch_compile():
    """No torch.compile on ZeroGPU (hub-docs: its kernels do not survive the fork; spaces.aoti_* compiles ahead of time)."""
    served = [ROOT / "app.py", *(ROOT / "brainmri").rglob("*.py")]
    assert [p.name for p in served if "torch.compile(" in p.read_text()] == []
