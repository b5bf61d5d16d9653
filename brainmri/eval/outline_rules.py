"""The outline rules' study as Markdown (docs/segmentation.md): per outliner, its figures on validation under the
fixed rule, under the rule chosen there, and cross-validated (chosen on one half of the scans, scored on the other),
beside the experts' agreement with each other (``results/outline_rules.json``, written by train.outline_rules)."""

from __future__ import annotations

import json
from pathlib import Path

from brainmri.data.masks import EXPERTS as EXPERT_FOLDERS
from brainmri.models.checkpoint import OUTLINE_RULES, results_dir
from brainmri.vocabulary import class_words, percent

EXPERTS = tuple(EXPERT_FOLDERS)  # the order of the " / " pairs in every outline table


def rule_words(rule: dict) -> str:
    """``{"threshold": 0.5, "min_area": 0.001, "mirror": false, "gate": true}`` -> "p > 0.5, ≥ 0.1% of the image, gated"."""
    words = [f"p > {rule['threshold']:g}", f"≥ {rule['min_area'] * 100:g}% of the image"]
    if rule["mirror"]:
        words.append("mirror-averaged")
    if rule["gate"]:
        words.append("gated by its class head")
    return ", ".join(words)


def _row(label: str, figures: dict) -> str:
    groups = [g for g in figures if g != "no_tumour"]
    cells = " | ".join(" / ".join(f"{figures[g][e]:.3f}" for e in EXPERTS) for g in groups)
    return f"| {label} | {cells} | {percent(figures['no_tumour']['empty_share'])} |"


def outline_rules_markdown(path: str | Path | None = None) -> str:
    """One table per outliner; empty when the study has not run."""
    path = Path(path) if path else results_dir() / OUTLINE_RULES
    if not path.is_file():
        return ""
    study = json.loads(path.read_text())
    parts = []
    for s in study["models"]:
        fixed = s["fixed"]["figures"]
        groups = [g for g in fixed if g != "no_tumour"]
        head = " | ".join(f"{'all tumours' if g == 'all' else class_words(g)} (n={fixed[g]['n']})" for g in groups)
        halves = s["cross_validated"]["rules"]
        same = all(h == s["chosen"]["rule"] for h in halves)
        lines = [
            f"**`{s['model']}`**: chosen, {rule_words(s['chosen']['rule'])}"
            + ("; the same rule on each half." if same else f"; on the halves: {'; '.join(rule_words(h) for h in halves)}."),
            "",
            f"| rule: Dice vs Cheng / BRISC | {head} | no tumour left empty (n={fixed['no_tumour']['n']}) |",
            "|---|" + "---:|" * (len(groups) + 1),
            _row(f"fixed ({rule_words(s['fixed']['rule'])})", fixed),
            _row("chosen on all validation scans", s["chosen"]["figures"]),
            _row("cross-validated (chosen on one half, scored on the other)", s["cross_validated"]["figures"]),
            "| experts vs each other | " + " | ".join(f"{s['experts'][g]['dice']:.3f}" for g in groups) + " | |",
        ]
        parts.append("\n".join(lines))
    allowed = "" if study.get("allow_mirror") else ", single-pass rules only (`--allow-mirror` off)"
    parts.append(
        f"A rule is allowed when it leaves at least {percent(study['min_empty'])} of the no-tumour slices empty{allowed}; the"
        " allowed rule with the best mean Dice against the two experts on all tumours is chosen. Grid: threshold 0.3-0.6,"
        " smallest outline 0.1-1% of the image, mirror average on or off, gate on or off (a model with a class head)."
    )
    return "\n\n".join(parts)


def served_rule_line(model: str, path: str | Path | None = None) -> str:
    """One sentence on ``model``'s outline as served, under the rule chosen for it; empty when the study has not run."""
    path = Path(path) if path else results_dir() / OUTLINE_RULES
    if not path.is_file():
        return ""
    study = next((s for s in json.loads(path.read_text())["models"] if s["model"] == model), None)
    if study is None:
        return ""
    f, cv = study["chosen"]["figures"], study["cross_validated"]["figures"]
    return (
        f"As served, with the rule chosen on validation ({rule_words(study['chosen']['rule'])}; `python -m train.outline_rules`):"
        f" Dice {f['all']['cheng']:.3f} / {f['all']['brisc']:.3f} against Cheng / BRISC, glioma {f['glioma']['cheng']:.3f} /"
        f" {f['glioma']['brisc']:.3f}; no-tumour slices left empty {percent(f['no_tumour']['empty_share'])}"
        f" (cross-validated: {cv['all']['cheng']:.3f} / {cv['all']['brisc']:.3f}, {percent(cv['no_tumour']['empty_share'])} empty)."
    )
