"""One home for the validation split (brainmri.data.split), no import circle among the project's modules, and serving
(app.py, brainmri/) never importing fitting (train/)."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

from brainmri.data.split import checkpoint_split, split_records
from train.config import TrainConfig
from train.loaders import load_train_records

ROOT = Path(__file__).resolve().parent.parent


def test_training_calibration_and_ood_fitting_see_the_same_validation_set(tmp_path, data_dir):
    cfg = TrainConfig(data=str(data_dir), limit_per_class=12, seed=3, val_fraction=0.25)
    train, val = split_records(load_train_records(cfg), cfg.val_fraction, cfg.seed)  # what train.loaders.build_loaders cuts
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    again_train, again_val = checkpoint_split(folder)  # what train.calibrate and train.ood fit rebuild
    assert again_val.sources == val.sources and again_train.sources == train.sources
    assert not set(val.sources) & set(train.sources) and len(val) >= 4


def _imports(path: Path) -> set[str]:
    """Project modules a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in {"brainmri", "train"}:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in {"brainmri", "train"})
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_circles_and_serving_never_imports_fitting():
    files = [ROOT / "app.py", *(p for d in ("brainmri", "train") for p in (ROOT / d).rglob("*.py"))]  # sub-packages too
    modules = {_module_name(p): p for p in files}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    serving = [m for m in graph if m == "app" or m.startswith("brainmri")]
    assert "brainmri.ood" in serving and "train.ood" in graph  # the OOD check serves; its fitting sits in train/
    assert not [m for m in serving if any(i.startswith("train") for i in graph[m])]

    def cycle_from(start: str, node: str, seen: tuple) -> tuple | None:
        for nxt in graph[node]:
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen:
                found = cycle_from(start, nxt, (*seen, nxt))
                if found:
                    return found
        return None

    cycles = [c for m in graph if (c := cycle_from(m, m, (m,)))]
    assert not cycles, cycles[0]


def test_the_layout_table_names_every_module():
    """docs/layout.md (the README's layout, module by module) matches the tree: each module of brainmri/ (its data/,
    models/ and eval/ in the same row), brainmri/app/, brainmri/serving/, train/, reports/ and ops/ is named in its
    folder's row, and each script (by file name) in scripts/'s."""
    root = Path(__file__).resolve().parent.parent
    lines = [line for line in (root / "docs" / "layout.md").read_text().splitlines() if line.startswith("| `")]
    rows = {key: line for line in lines for key in line.split("|")[1].strip(" `").split("`, `")}
    folders = ["brainmri/", *(f"brainmri/{p}/" for p in ("data", "models", "eval", "app", "serving")), "train/", "reports/", "ops/"]
    for folder in folders:
        modules = {p.stem for p in (root / folder).glob("*.py") if p.stem != "__init__"}
        missing = sorted(m for m in modules if f"`{m}`" not in rows.get(folder, rows["brainmri/"]))
        assert not missing, f"docs/layout.md's row {folder} does not name {missing}"
    scripts = sorted(p.name for p in (root / "scripts").iterdir() if p.suffix in (".py", ".sh"))
    missing = [name for name in scripts if f"`{name}`" not in rows["scripts/"]]
    assert not missing, f"docs/layout.md's row scripts/ does not name {missing}"


def test_a_hub_datasets_image_is_named_by_its_content_in_any_subset():
    """Named by position, image #0 of one validation set was image #0 of any other: a split cut another way passed."""
    import numpy as np

    from brainmri.data.records import ImageRecords

    records = ImageRecords([b"first jpeg", b"second jpeg", b"third jpeg"], np.array([0, 1, 2]), ["a", "b", "c"])
    names = [records.name(i) for i in range(3)]
    assert len(set(names)) == 3 and all(n.startswith("image sha256:") for n in names)
    assert records.subset([2, 0]).name(0) == names[2]  # the same image, the same name, wherever it sits
