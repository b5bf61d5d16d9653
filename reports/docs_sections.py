"""The docs' generated sections: the tables and figures ``python -m reports.results --docs`` writes between their
``<!-- SECTION:name -->`` markers in README.md and docs/, and the one way to replace a section (:func:`update_section`).
"""

from __future__ import annotations

from pathlib import Path

from brainmri.eval.one_encoder import one_encoder_markdown
from brainmri.eval.outline_rules import outline_rules_markdown
from brainmri.eval.report import segmentation_markdown
from brainmri.eval.seeds import seed_markdown
from brainmri.eval.tables import metric_columns, read_metrics
from brainmri.models.catalog import checkpoint_folders, read_ensemble_figures
from brainmri.models.checkpoint import METRICS, UNSEEN
from brainmri.models.registry import APP_DEFAULT, ENSEMBLES
from brainmri.models.segmenters import SEGMENTERS
from brainmri.settings import ROOT
from brainmri.vocabulary import CLASS_WORDS, percent
from reports.cam_sanity import cam_sanity_markdown
from reports.retrained import SNAPSHOT, read_snapshot, retrained_markdown

DOCS = ROOT / "docs" / "experiments.md"  # holds the results and seed sections
README = ROOT / "README.md"  # holds the headline section and the one-encoder summary
HEATMAPS_DOC = ROOT / "docs" / "heatmaps.md"  # holds the heatmap check's table
SEGMENTATION_DOC = ROOT / "docs" / "segmentation.md"  # holds the U-Net's table and the one-encoder section in full
SECTION = ("<!-- SECTION:results -->", "<!-- /SECTION:results -->")
SEED_SECTION = ("<!-- SECTION:seed -->", "<!-- /SECTION:seed -->")
HEADLINE_SECTION = ("<!-- SECTION:headline -->", "<!-- /SECTION:headline -->")
SEGMENTATION_SECTION = ("<!-- SECTION:segmentation -->", "<!-- /SECTION:segmentation -->")  # README
ONE_ENCODER_SECTION = ("<!-- SECTION:one-encoder -->", "<!-- /SECTION:one-encoder -->")  # README
LEAK_SECTION = ("<!-- SECTION:leak -->", "<!-- /SECTION:leak -->")  # docs/experiments.md
CAM_SANITY_SECTION = ("<!-- SECTION:cam-sanity -->", "<!-- /SECTION:cam-sanity -->")  # docs/heatmaps.md
RETRAINED_SECTION = ("<!-- SECTION:retrained -->", "<!-- /SECTION:retrained -->")  # docs/experiments.md
OUTLINE_RULES_SECTION = ("<!-- SECTION:outline-rules -->", "<!-- /SECTION:outline-rules -->")  # docs/segmentation.md
CALIBRATION_SECTION = ("<!-- SECTION:calibration -->", "<!-- /SECTION:calibration -->")  # docs/trust.md
TRUST_DOC = ROOT / "docs" / "trust.md"  # holds the temperatures' table


def headline_markdown(root: str | Path = ROOT / "checkpoints") -> str:
    """The README's table: each shipped model's unseen-Testing accuracy (the honest figure) with its 95% interval,
    the official Testing beside it, best unseen first (Testing where unseen is not measured yet)."""
    rows = []
    for folder in checkpoint_folders(root, holding=METRICS, classifiers=True):
        m = metric_columns(read_metrics(folder))
        rows.append(m)
    for name in ENSEMBLES:  # served answers without a folder of their own: their figures file beside checkpoints/
        figures = read_ensemble_figures(name, Path(root).parent / "results")
        if figures is not None:
            rows.append(metric_columns(figures))
    rows.sort(key=lambda m: (-(m["test_unseen_accuracy"] or m["test_accuracy"] or 0), -(m["test_accuracy"] or 0)))
    lines = [
        *_headline_sentence(root, rows),
        "| model | unseen Testing (95% CI) | n | official Testing (95% CI) | params | input |",
        "|---|---|---:|---|---:|---:|",
    ]
    for m in rows:
        name = f"`{m['model']}`" + (" (app default)" if m["model"] == APP_DEFAULT else "")
        params = "" if m["parameters"] is None else f"{m['parameters'] / 1e6:.1f} M"
        lines.append(
            f"| {name} | {_pct_ci(m['test_unseen_accuracy'], m['test_unseen_accuracy_ci95'])} | {m['test_unseen_n'] or ''} "
            f"| {_pct_ci(m['test_accuracy'], m['test_accuracy_ci95'])} | {params} | {m['input_size'] or ''} |"
        )
    return "\n".join(lines) + "\n"


def _headline_sentence(root: str | Path, rows: list[dict]) -> list[str]:
    """The README's first figures, in words: the default's and the best model's unseen accuracy, and the thin classes."""
    default = next((m for m in rows if m["model"] == APP_DEFAULT and m["test_unseen_accuracy"] is not None), None)
    singles = [m for m in rows if m["model"] != APP_DEFAULT]
    best = singles[0] if singles and singles[0]["test_unseen_accuracy"] is not None else None
    if default is None or best is None:
        return []
    # every single model level with the first on both Testing figures is named: the sort's order among them is the folders'
    tied = [
        m["model"]
        for m in singles
        if (m["test_unseen_accuracy"], m["test_accuracy"]) == (best["test_unseen_accuracy"], best["test_accuracy"])
    ]
    best_words = (
        f"the best single model, `{best['model']}`,"
        if len(tied) == 1
        else ("the best single models, " + " and ".join(f"`{t}`" for t in tied) + " (tied),")
    )
    if APP_DEFAULT in ENSEMBLES:  # no card of its own: its figures file
        scored, where = read_ensemble_figures(APP_DEFAULT, Path(root).parent / "results"), f", in `results/{APP_DEFAULT}.json`"
    else:
        scored, where = read_metrics(Path(root) / APP_DEFAULT), ""
    per_class = scored[UNSEEN]["per_class"]
    thin = " and ".join(f"{n['n']} {CLASS_WORDS.get(c, c)}" for c, n in per_class.items() if n["n"] < 50)

    what = f" ({ENSEMBLES[APP_DEFAULT].about})" if APP_DEFAULT in ENSEMBLES else ""

    def said(m: dict) -> str:
        lo, hi = m["test_unseen_accuracy_ci95"]
        official = f"{100 * m['test_accuracy']:.2f}% on official Testing"
        return f"**{100 * m['test_unseen_accuracy']:.1f}%** (95% CI {100 * lo:.1f}-{100 * hi:.1f}; {official})"

    return [
        f"On the {default['test_unseen_n']} unseen Testing images, the app's default `{APP_DEFAULT}`{what} scores {said(default)},"
        f" and {best_words} {said(best)}. Only {thin} images are unseen, so those classes' figures"
        f" are wide (per class in each model card{where} and in the Experiments tab).",
        "",
    ]


def leak_markdown(before: str | Path = SNAPSHOT) -> str:
    """Per classifier of the as-is split (``results/as_is_split.json``, reports.retrained): validation as first
    measured (mirrored twins of training images in it) against its leak-free part (``val_split.txt``,
    train.leak_free), and official against unseen Testing. Those weights are all retrained since; git keeps them."""
    lines = [
        "| model | validation as shipped (n) | leak-free validation (n) | inflation | official Testing | unseen Testing (n) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, f in sorted(read_snapshot(before).items()):
        old, new = f.get("validation_leaky"), f["validation"]
        if old is None:
            continue
        unseen = f"{_pct_ci(f['test_unseen'], None)} ({f['test_unseen_n'] or ''})"
        lines.append(
            f"| `{name}` | {100 * old:.2f}% ({f['validation_leaky_n']}) | {100 * new:.2f}% ({f['validation_n']})"
            f" | {100 * (old - new):+.2f} pts | {_pct_ci(f['test'], None)} | {unseen} |"
        )
    return "\n".join(lines) + "\n"


def calibration_markdown(root: str | Path = ROOT / "checkpoints") -> str:
    """Per shipped classifier: its temperature and the 15-bin ECE before and after it on validation (where T was
    fitted), official and unseen Testing, from ``metrics.json["calibration"]`` (train.calibrate)."""
    lines = [
        "| model | T | validation ECE (n) | official Testing ECE | unseen Testing ECE |",
        "|---|---:|---|---|---|",
    ]
    for folder in checkpoint_folders(root, holding=METRICS, classifiers=True):
        m = metric_columns(read_metrics(folder))
        if m["temperature"] is None:
            continue
        cells = [_ece_cell(m[f"{key}_ece_raw"], m[f"{key}_ece_calibrated"]) for key in ("val", "test", "test_unseen")]
        lines.append(f"| `{folder.name}` | {m['temperature']:.3f} | {cells[0]} ({m['val_n']}) | {cells[1]} | {cells[2]} |")
    return "\n".join(lines) + "\n"


def _ece_cell(before: float | None, after: float | None) -> str:
    """An ECE before and after T, as "x% → y%"; empty where it was not measured."""
    return "" if before is None or after is None else f"{100 * before:.1f}% → {100 * after:.2f}%"


def _pct_ci(value: float | None, ci: list | None) -> str:
    return "not measured" if value is None else percent(value, ci, digits=2)


def update_section(path: str | Path, markdown: str, note: str, section: tuple[str, str] = SECTION) -> None:
    """Replace what lies between the ``section`` markers of the Markdown file ``path``; ValueError if they are missing."""
    path = Path(path)
    text = path.read_text()
    start, end = section
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{path} needs one {start} ... {end} pair")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    path.write_text(f"{head}{start}\n{note}\n\n{markdown}{end}{tail}")


def update_docs(
    sources: list[str],
    tables_md: str,
    docs: str | Path = DOCS,
    readme: str | Path = README,
    segmentation: str | Path = SEGMENTATION_DOC,
    heatmaps: str | Path = HEATMAPS_DOC,
    trust: str | Path = TRUST_DOC,
) -> None:
    """Write the generated tables where the docs read them: results and seed sections of ``docs``, headline of
    ``readme`` (from the checkpoints among ``sources``)."""
    note = (
        f"Generated by `python -m reports.results --docs` from {', '.join(f'`{s}`' for s in sources)}; "
        "full precision in `results/experiments.csv`. *Unseen* is Testing without the images that have an exact, near or "
        "mirrored twin in Training (empty where not measured yet); *test* is the official Testing split."
    )
    seed_note = "Generated by `python -m reports.results --docs` from the shipped `simple_cnn_*` checkpoints (brainmri.eval.seeds)."
    update_section(docs, tables_md, note)
    update_section(docs, seed_markdown(), seed_note, SEED_SECTION)
    checkpoints = next((s for s in sources if Path(s).is_dir() and Path(s).name == "checkpoints"), ROOT / "checkpoints")
    headline_note = (
        f"Generated by `python -m reports.results --docs` from `{Path(checkpoints).name}/*/metrics.json`"
        f" and, for the default ensemble, `results/{APP_DEFAULT}.json` (`python scripts/ensemble_default.py --served`)."
    )
    update_section(readme, headline_markdown(checkpoints), headline_note, HEADLINE_SECTION)
    leak_note = (
        "Generated by `python -m reports.results --docs` from `results/as_is_split.json` (`python -m reports.retrained"
        " --snapshot`: each model's last as-is weights in git history, after `python -m train.leak_free`)."
    )
    update_section(docs, leak_markdown(), leak_note, LEAK_SECTION)
    calibration_note = (
        f"Generated by `python -m reports.results --docs` from `{Path(checkpoints).name}/*/metrics.json`"
        " (`calibration`, written by `python -m train.calibrate`)."
    )
    update_section(trust, calibration_markdown(checkpoints), calibration_note, CALIBRATION_SECTION)
    retrained_note = (
        "Generated by `python -m reports.results --docs` from each shipped checkpoint's metrics.json and `results/as_is_split.json`."
    )
    update_section(docs, retrained_markdown(checkpoints), retrained_note, RETRAINED_SECTION)
    cam_note = "Generated by `python -m reports.results --docs` from `results/cam_sanity.json` (`python -m reports.cam_sanity`)."
    update_section(heatmaps, cam_sanity_markdown(), cam_note, CAM_SANITY_SECTION)
    unet = next(name for name, spec in SEGMENTERS.items() if not spec.num_classes)  # the outline-only U-Net
    seg_note = f"Generated by `python -m reports.results --docs` from `{Path(checkpoints).name}/{unet}/metrics.json`."
    update_section(segmentation, segmentation_markdown(Path(checkpoints) / unet) + "\n", seg_note, SEGMENTATION_SECTION)
    one = next(name for name, spec in SEGMENTERS.items() if spec.num_classes)  # one encoder for class and outline
    one_note = (
        f"Generated by `python -m reports.results --docs` from `{Path(checkpoints).name}/{one}/metrics.json` and"
        " `results/multitask_default.json` (`python -m train.multitask_default`)."
    )
    for path, compact in ((readme, True), (segmentation, False)):
        text = one_encoder_markdown(Path(checkpoints) / one, compact=compact) or f"`{one}` is not shipped yet."
        update_section(path, text + "\n", one_note, ONE_ENCODER_SECTION)
    rules_note = "Generated by `python -m reports.results --docs` from `results/outline_rules.json` (`python -m train.outline_rules`)."
    rules = outline_rules_markdown() or "The rules' study has not run yet."
    update_section(segmentation, rules + "\n", rules_note, OUTLINE_RULES_SECTION)
