"""Do the heatmaps point at the tumour? The pointing game and the mass in the box, on held-out boxed slices.

    python -m reports.cam_localisation --data DATA                       # every local checkpoint, its registry layer
    python -m reports.cam_localisation --data DATA --models tf_efficientnet_lite0 --layers bn2 blocks.5 blocks.4 \\
        --methods Grad-CAM HiResCAM                                       # which layer and method point best
    python -m reports.cam_localisation --data DATA --models multitask_lite0 --methods LayerCAM \\
        --layers net.classifier.bn2+net.classifier.blocks.4 net.classifier.bn2+net.classifier.blocks.3  # which stages to fuse

The boxes (``../shared/data/brain-tumor-mri-boxes/training_boxes.csv``, matched from Cheng et al.'s
figshare set) cover Training images only, so each model is scored on the boxed images of its own
validation split (brainmri.data.split: images it never trained on), never on Testing. For each image the
heatmap comes from the app's path (``Predictor``'s batched Grad-CAM); the **pointing game** counts a
hit when its peak (``details.cam_peak``) lies inside the tumour box, and the **mass in the box** is
the share of heatmap mass inside it. Chance levels beside them: the image centre (a hit when the box
holds the centre), a random point in the head (the box's share of the Otsu brain mask) and a uniform
map (the box's share of the image). Where the expert masks lie beside the data (brainmri.data.masks.masks_folder),
each image is scored against its tumour's own outline as well: ``mask_hit`` (the peak inside the mask) and
``mask_mass`` (the share of heatmap mass inside it), with ``mask_uniform`` (the mask's share of the image) as
chance. The validation images are cut in two halves by a seeded draw: choose a layer and method on ``choose``,
report on ``report``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from brainmri.cli import add_data_argument, exit_code, setup_logging, write_json
from brainmri.data.imageio import load_image
from brainmri.data.masks import masks_folder
from brainmri.data.split import checkpoint_split
from brainmri.eval.localisation import localisation_table  # the Experiments tab's table, in the docs too
from brainmri.explain import CAM_METHODS, DEFAULT_METHOD, FUSING_METHODS, prepare_for_cam, shared_parent
from brainmri.models.catalog import discover
from brainmri.models.checkpoint import CAM_LOCALISATION, results_dir
from brainmri.serving import Predictor
from brainmri.settings import ROOT, onnx_runtime_as
from reports.cam_sanity import brain_mask
from reports.docs_sections import HEATMAPS_DOC, update_section

_logger = logging.getLogger(__name__)


def boxes_beside(data: str | Path) -> Path:
    """The tumour boxes' table beside the data folder, as the experts' masks are (brainmri.data.masks.EXPERTS)."""
    return Path(f"{Path(data).expanduser().resolve()}-boxes") / "training_boxes.csv"


BATCH = 16
FUSED = next(iter(FUSING_METHODS))  # a method that weighs every layer of a setting, to name the whole setting


@dataclass(frozen=True)
class Box:
    """A tumour box in 0-1 coordinates of the image (x to the right, y down)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def holds(self, x: float, y: float) -> bool:
        return self.x0 <= x <= self.x1 and self.y0 <= y <= self.y1

    def pixels(self, width: int, height: int) -> tuple[slice, slice]:
        """(rows, columns) of the pixels whose centres lie in the box."""
        cols = slice(int(np.ceil(self.x0 * width - 0.5)), int(np.floor(self.x1 * width - 0.5)) + 1)
        rows = slice(int(np.ceil(self.y0 * height - 0.5)), int(np.floor(self.y1 * height - 0.5)) + 1)
        return rows, cols


def load_boxes(path: str | Path) -> dict[str, Box]:
    """``Training/<class>/<file>`` -> its tumour box."""
    with Path(path).open(newline="") as f:
        return {r["path"]: Box(*(float(r[k]) for k in ("x0", "y0", "x1", "y1"))) for r in csv.DictReader(f)}


def boxed_validation(folder: Path, data: str, boxes: dict[str, Box]) -> list[tuple[Path, str, Box]]:
    """(file, class, box) of the checkpoint's validation images that have a box."""
    _, val = checkpoint_split(folder, data)
    root = Path(data).resolve()
    out = []
    for source, label in zip(val.sources, val.labels):
        key = Path(source).resolve().relative_to(root).as_posix()
        if key in boxes:
            out.append((Path(source), val.class_names[label], boxes[key]))
    return out


def halves(items: list, seed: int = 0) -> dict[str, list]:
    """A seeded half of the items to choose on, the other to report on."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    cut = len(order) // 2
    return {"choose": [items[i] for i in sorted(order[:cut])], "report": [items[i] for i in sorted(order[cut:])]}


def tumour_mask(path: Path, size: tuple[int, int]) -> np.ndarray | None:
    """The expert mask of a Training image at ``size`` (width, height), or None when it has none."""
    for parent in path.parents:
        folder = masks_folder(parent)
        if folder is not None:
            mask = folder / path.relative_to(parent.resolve()).with_suffix(".png")
            return np.asarray(Image.open(mask).convert("L").resize(size, Image.NEAREST)) >= 128 if mask.is_file() else None
    return None


KEYS = ("hit", "mass", "centre", "head", "uniform")
MASK_KEYS = ("mask_hit", "mask_mass", "mask_uniform")


def score(predictor: Predictor, name: str, method: str, items: list[tuple[Path, str, Box]]) -> dict:
    """Pointing game, mass in the box (and in the mask, where there is one) and the chance levels, overall and per class."""
    per_class: dict[str, dict[str, list[float]]] = {}
    for start in tqdm(range(0, len(items), BATCH), desc=f"{name} {method}", leave=False, mininterval=5):
        chunk = items[start : start + BATCH]
        images = [load_image(path) for path, _, _ in chunk]
        results = predictor.predict_many(images, name, method, outline=False)  # the heatmap is scored, not the segmenter
        for (path, cls, box), image, result in zip(chunk, images, results):
            w, h = image.size
            rows, cols = box.pixels(w, h)
            inside = np.zeros((h, w), dtype=bool)
            inside[rows, cols] = True
            head = brain_mask(image)
            total = float(result.cam.sum())
            m = per_class.setdefault(cls, {k: [] for k in (*KEYS, *MASK_KEYS)})
            mask = tumour_mask(path.resolve(), (w, h))
            if mask is not None and mask.any():
                x, y = result.cam_peak
                m["mask_hit"].append(float(mask[min(h - 1, int(y * h)), min(w - 1, int(x * w))]))
                m["mask_mass"].append(float(result.cam[mask].sum()) / total if total > 0 else 0.0)
                m["mask_uniform"].append(float(mask.mean()))
            m["hit"].append(float(box.holds(*result.cam_peak)))
            m["mass"].append(float(result.cam[inside].sum()) / total if total > 0 else 0.0)
            m["centre"].append(float(box.holds(0.5, 0.5)))
            m["head"].append(float((inside & head).sum()) / max(1, int(head.sum())))
            m["uniform"].append(float(inside.mean()))

    def summary(values: dict[str, list[float]]) -> dict:
        out = {"n": len(values["hit"]), **{k: round(statistics.fmean(v), 4) for k, v in values.items() if v}}
        return out | ({"n_masked": len(values["mask_hit"])} if values["mask_hit"] else {})

    everything = {k: [x for m in per_class.values() for x in m[k]] for k in (*KEYS, *MASK_KEYS)}
    return {**summary(everything), "per_class": {c: summary(v) for c, v in sorted(per_class.items())}}


def with_layer(predictor: Predictor, name: str, layer: str | None) -> None:
    """Point the loaded model's CAM at ``layer`` (a module path in the model) instead of the registry's layers.

    ``"a+b+c"`` fuses several: ``a`` is the layer every method weighs, ``b`` and ``c`` the shallower stages that
    LayerCAM fuses with it (as the registry's ``cam_stages``); a single path is weighed alone.
    """
    loaded = predictor.model(name)
    if layer:
        modules = dict(loaded.model.named_modules())
        paths = layer.split("+")
        if missing := [path for path in paths if path not in modules]:
            raise ValueError(f"{name} has no module {', '.join(map(repr, missing))}")
        loaded.layer, loaded.stages = modules[paths[0]], [modules[p] for p in paths[1:]]
        prepare_for_cam(loaded.model)


def with_cam_size(predictor: Predictor, name: str, size: int | None) -> None:
    """Run the loaded model's heatmap pass at ``size`` pixels instead of the registry's ``cam_size``; at the input size
    the heatmap's forward also classifies, as the app then serves it (brainmri.serving.classify)."""
    if size:
        predictor.model(name).set_cam_size(size)


def run(
    data: str,
    boxes_csv: Path,
    models: list[str] | None,
    layers: list[str | None],
    methods: list[str],
    seed: int = 0,
    cam_size: int | None = None,
) -> dict:
    predictor = Predictor(discover(hub=False))
    boxes = load_boxes(boxes_csv)
    report = {"boxes": str(boxes_csv), "seed": seed, "runs": []}
    for name in models or predictor.single_models:
        folder = Path(predictor.sources[name].location)
        items = halves(boxed_validation(folder, data, boxes), seed)
        registry = predictor.model(name)
        registry_layers, registry_side = registry.cam_layer_name(FUSED), registry.cam_size or registry.cfg["input_size"][-1]
        for layer in layers:
            predictor.cache = type(predictor.cache)(predictor.cache.max_bytes)  # a fresh copy of the model for each layer
            with_layer(predictor, name, layer)
            with_cam_size(predictor, name, cam_size)
            loaded = predictor.model(name)
            side = loaded.cam_size or loaded.cfg["input_size"][-1]
            served = layer in (None, registry_layers) and side == registry_side  # as the app serves this model
            for method in methods:
                layer_name = loaded.cam_layer_name(method)
                run_ = {"model": name, "layer": layer_name, "method": method, "cam_size": side, "served": served}
                run_.update({part: score(predictor, name, method, chunk) for part, chunk in items.items()})
                _logger.info(
                    "%s %s %s: pointing %.3f (choose) %.3f (report), mass in box %.3f; chance: centre %.3f, head %.3f",
                    name, layer_name, method, run_["choose"]["hit"], run_["report"]["hit"], run_["report"]["mass"],
                    run_["report"]["centre"], run_["report"]["head"],
                )  # fmt: skip
                report["runs"].append(run_)
    return report


MASK_SECTION = ("<!-- SECTION:cam-masks -->", "<!-- /SECTION:cam-masks -->")  # docs/heatmaps.md
BOX_SECTION = ("<!-- SECTION:cam-boxes -->", "<!-- /SECTION:cam-boxes -->")


def mask_markdown(report: dict) -> str:
    """Per model (report half): the pointing game and mass against the box and against the tumour's own mask."""
    lines = [
        "| model | method | n (masked) | peak in box | peak in mask | mass in box | mass in mask | mask's share (chance) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(report["runs"], key=lambda r: -r["report"].get("mask_hit", 0)):
        h = r["report"]
        if "mask_hit" not in h:
            continue
        lines.append(
            f"| `{r['model']}` | {r['method']} | {h['n']} ({h['n_masked']}) | {h['hit']:.1%} | {h['mask_hit']:.1%} | {h['mass']:.1%}"
            f" | {h['mask_mass']:.1%} | {h['mask_uniform']:.1%} |"
        )
    return "\n".join(lines) + "\n"


STAGES_SECTION = ("<!-- SECTION:cam-stages -->", "<!-- /SECTION:cam-stages -->")  # docs/heatmaps.md


def stages_markdown(report: dict) -> str:
    """A sweep of layer sets (``--layers a+b+c ...``): each model and method apart, the best choose half first and,
    on a tie, the fewer stages. The report half is shown for the registry's setting only: the choice is made on the
    choose half, and the report half is read once, for it."""
    lines = [
        "| model | layers fused | method | pointing, choose half (hits / n) | mass in box, choose half | pointing, report half (n) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in sorted(report["runs"], key=lambda r: (r["model"], r["method"], -r["choose"]["hit"], r["layer"].count("+"))):
        c, h = r["choose"], r["report"]
        layers = " + ".join(shared_parent(r["layer"])[1])
        shown = f"**{h['hit']:.1%}** ({h['n']}), served" if r.get("served") else ""
        hits = f"{c['hit']:.1%} ({round(c['hit'] * c['n'])} / {c['n']})"
        lines.append(f"| `{r['model']}` | {layers} | {r['method']} | {hits} | {c['mass']:.3f} | {shown} |")
    return "\n".join(lines) + "\n"


def doc_sections(report: dict, out: Path, boxes: bool = True, stages: bool = False) -> list[tuple[tuple[str, str], str, str]]:
    """What ``--docs`` (the box and box-and-mask tables) and ``--docs-stages`` (a sweep of layer sets) write into
    docs/heatmaps.md, from the report written to ``out``: (section markers, the line naming the command, the table)."""
    shown = out.resolve().relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out  # as the command is typed
    command = f"`python -m reports.cam_localisation --docs --out {shown}`"
    sections = []
    if boxes:
        sections.append(
            (BOX_SECTION, f"Generated by {command} (report halves; the Experiments tab shows it).", localisation_table(report["runs"]))
        )
        sections.append((MASK_SECTION, f"Generated by {command} (report halves of each model's validation).", mask_markdown(report)))
    if stages:
        note = f"Generated by `python -m reports.cam_localisation --docs-stages --out {shown}` and the sweep's arguments."
        sections.append((STAGES_SECTION, note, stages_markdown(report)))
    return sections


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], fromfile_prefix_chars="@")  # @FILE: one argument a line
    add_data_argument(parser)  # the folder the boxes' paths are relative to
    parser.add_argument("--boxes", type=Path, help="training_boxes.csv (default: beside --data, DATA-boxes/)")
    parser.add_argument("--models", nargs="*", default=None, help="default: every local checkpoint")
    layers = "module paths to weigh instead of the registry's layers; a+b+c fuses b and c with a (LayerCAM)"
    parser.add_argument("--layers", nargs="*", default=[None], help=layers)
    methods = "explanation methods to score (default: %(default)s)"
    parser.add_argument("--methods", nargs="*", default=[DEFAULT_METHOD], choices=list(CAM_METHODS), help=methods)
    parser.add_argument("--out", type=Path, default=results_dir() / CAM_LOCALISATION, help="the report (default: %(default)s)")
    parser.add_argument("--docs", action="store_true", help="also write the box and the box-and-mask tables into docs/heatmaps.md")
    parser.add_argument("--cam-size", type=int, default=None, help="the heatmap pass's side in pixels (default: the registry's)")
    parser.add_argument("--docs-stages", action="store_true", help="also write a sweep of --layers into docs/heatmaps.md")
    args = parser.parse_args(argv)
    if args.docs_stages and args.out.resolve() == (results_dir() / CAM_LOCALISATION).resolve():
        parser.error("--docs-stages needs an --out of its own: a sweep must not replace the figures the app shows")

    def go() -> None:
        # A swept stage may lie in the served heatmap's prefix, which ONNX Runtime runs whole: a sweep runs in torch.
        with onnx_runtime_as(False) if any(args.layers or []) else contextlib.nullcontext():
            boxes = args.boxes or boxes_beside(args.data)
            report = run(args.data, boxes, args.models, args.layers or [None], args.methods, cam_size=args.cam_size)
        write_json(args.out, report)
        print(f"wrote {args.out}")
        for section, note, markdown in doc_sections(report, args.out, args.docs, args.docs_stages):
            update_section(HEATMAPS_DOC, markdown, note, section)

    return exit_code(go, _logger)


if __name__ == "__main__":
    sys.exit(main())
