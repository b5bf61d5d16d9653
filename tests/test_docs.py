"""The README is a front page and docs/ holds the rest; every generated table sits where its generator writes it.

``python -m reports.results --docs`` writes the results and seed tables into docs/experiments.md and the headline
table into README.md, between their ``SECTION`` markers. Here the generator runs on copies of both files from
today's checkpoints and results/experiments.csv: the copies must come out unchanged (rerun the command after
metrics.json changes), and nothing outside the markers may move.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from reports import docs_sections as sections
from reports import results

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SPACE = "space.md"  # publishing the Space: written alongside this page (issue 20), linked before it lands


def _markers(path: Path, section: tuple[str, str]) -> int:
    text = path.read_text()
    return min(text.count(section[0]), text.count(section[1]))


def test_the_generator_writes_where_the_docs_read():
    assert sections.DOCS == DOCS / "experiments.md" and sections.README == README
    for section in (sections.SECTION, sections.SEED_SECTION):
        assert _markers(sections.DOCS, section) == 1, f"docs/experiments.md needs one {section[0]} pair"
        assert _markers(README, section) == 0, f"{section[0]} moved to docs/experiments.md; the README must not hold a stale copy"
    assert _markers(README, sections.HEADLINE_SECTION) == 1
    assert _markers(sections.SEGMENTATION_DOC, sections.SEGMENTATION_SECTION) == 1 and _markers(README, sections.SEGMENTATION_SECTION) == 0
    assert _markers(sections.SEGMENTATION_DOC, sections.ONE_ENCODER_SECTION) == 1 and _markers(README, sections.ONE_ENCODER_SECTION) == 1
    assert _markers(sections.SEGMENTATION_DOC, sections.OUTLINE_RULES_SECTION) == 1
    assert _markers(sections.DOCS, sections.RETRAINED_SECTION) == 1
    assert _markers(sections.HEATMAPS_DOC, sections.CAM_SANITY_SECTION) == 1
    assert _markers(sections.DOCS, sections.LEAK_SECTION) == 1 and _markers(sections.TRUST_DOC, sections.CALIBRATION_SECTION) == 1


def test_the_leak_and_calibration_tables_have_a_row_per_model():
    """Both once came out wrong: the leak's as a bare header when the shipped folders lost their leaky figures to the
    retrains (its rows: the 13 classifiers of the as-is split), the temperatures' stale when they were typed by hand."""
    leak, calibration = sections.leak_markdown(), sections.calibration_markdown()
    assert leak.count("\n| `") == 13 and "| `tf_efficientnet_lite2` | 99.63% (816) | 99.50% (399) | +0.13 pts" in leak
    assert calibration.count("\n| `") == 14 and "| `tf_efficientnet_lite0` | 0.593 | 7.3% → 0.55% (816) |" in calibration


def test_the_generated_tables_are_what_the_checkpoints_say_today(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the sources are named relative to the repository, as in the command
    docs, readme, segmentation = tmp_path / "experiments.md", tmp_path / "README.md", tmp_path / "segmentation.md"
    heatmaps, trust = tmp_path / "heatmaps.md", tmp_path / "trust.md"
    shutil.copy(sections.HEATMAPS_DOC, heatmaps)
    shutil.copy(sections.TRUST_DOC, trust)
    shutil.copy(sections.DOCS, docs)
    shutil.copy(README, readme)
    shutil.copy(sections.SEGMENTATION_DOC, segmentation)
    rows = results.gather(results.SOURCES)
    sections.update_docs(results.SOURCES, results.render_markdown(rows), docs, readme, segmentation, heatmaps, trust)
    assert trust.read_text() == sections.TRUST_DOC.read_text(), "docs/trust.md is stale: python -m reports.results --docs"
    assert heatmaps.read_text() == sections.HEATMAPS_DOC.read_text(), "docs/heatmaps.md is stale: python -m reports.results --docs"
    assert segmentation.read_text() == sections.SEGMENTATION_DOC.read_text(), (
        "docs/segmentation.md is stale: python -m reports.results --docs"
    )
    assert docs.read_text() == sections.DOCS.read_text(), "docs/experiments.md is stale: python -m reports.results --docs"
    assert readme.read_text() == README.read_text(), "the README's headline table is stale: python -m reports.results --docs"


def test_cut_short_runs_sit_apart_from_finished_ones():
    rows = [
        {**dict.fromkeys([*results.COLUMNS, *results.EXTRA]), "model": m, "epochs_run": e, "stopped": s, "status": "ok"}
        for m, e, s in (("resnet18", 10, "epochs"), ("efficientnet_b7", 2, "time budget"), ("efficientnet_b1", 7, "time budget"))
    ]
    finished, short = results.render_markdown(rows).split("**Cut short**")
    assert "| resnet18 |" in finished and "efficientnet" not in finished
    assert "| efficientnet_b7 |" in short and "| efficientnet_b1 |" in short and "(2-7 epochs)" in short
    assert "Cut short" not in results.render_markdown(rows[:1])  # nothing cut short: one table


def test_the_readme_is_a_front_page():
    text = README.read_text()
    body = text.split("---", 2)[2]  # after the Space's YAML front matter
    assert len(body.splitlines()) <= 150
    assert len(body.split()) <= 1600, "past a five-minute read: move the detail to docs/"  # 1,516 on 2026-12-06
    for needle in ("pip install -r requirements-dev.txt", "python app.py", "python -m pytest -q", "## Layout"):
        assert needle in body
    assert "unseen Testing" in body and "## Where the tumour is" in body and "## Honest numbers" in body


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_doc_is_linked_and_its_links_resolve(doc):
    assert f"docs/{doc}" in README.read_text(), f"the README does not link docs/{doc}"
    path = DOCS / doc
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if not target.startswith("http") and target != SPACE:
            assert (path.parent / target).exists(), f"{doc} links {target}, which is not there"


def test_the_readme_links_resolve():
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text()):
        if not target.startswith("http") and target != f"docs/{SPACE}":
            assert (ROOT / target).exists(), f"README links {target}, which is not there"


def test_the_headline_names_every_single_model_tied_for_best():
    """The best single model is the first after a sort by unseen, then official Testing; models level on both are
    all named, so that the folders' alphabetical order does not pick one of them."""
    from brainmri.models.registry import APP_DEFAULT

    def row(model: str, unseen: float, official: float) -> dict:
        return {"model": model, "test_unseen_accuracy": unseen, "test_unseen_accuracy_ci95": [0.9, 1.0], "test_unseen_n": 335,
                "test_accuracy": official}  # fmt: skip

    rows = [row(APP_DEFAULT, 0.99, 0.99), row("a", 0.98, 0.99), row("b", 0.98, 0.99), row("c", 0.98, 0.98)]
    sentence = " ".join(sections._headline_sentence(ROOT / "checkpoints", rows))
    assert "the best single models, `a` and `b` (tied)" in sentence and "`c`" not in sentence
    sentence = " ".join(sections._headline_sentence(ROOT / "checkpoints", rows[:2] + rows[3:]))
    assert "the best single model, `a`," in sentence


def test_the_readme_table_is_best_unseen_first_then_best_official():
    """Models level on unseen Testing are ordered by official Testing, not by their folders' names."""
    rows = re.findall(r"^\| `[^`]+`[^|]*\| ([\d.]+)% \([^)]*\) \| \d+ \| ([\d.]+)% ", README.read_text(), flags=re.M)
    assert len(rows) > 10
    keys = [(-float(unseen), -float(official)) for unseen, official in rows]
    assert keys == sorted(keys)
