"""The multi-task model's figures as Markdown (the Experiments tab, docs/segmentation.md, its model card): its class on
validation, official and unseen Testing, with calibration; its outline against each expert beside the experts'
agreement and the default segmenter's on the same scans; and the default rule's verdict (train.multitask_default)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from brainmri.eval.outline_rules import rule_words, served_rule_line
from brainmri.eval.tables import metrics_if_any
from brainmri.models.checkpoint import MULTITASK_DEFAULT, UNSEEN, results_dir
from brainmri.models.registry import APP_DEFAULT, ENSEMBLES
from brainmri.segmentation import OutlineRule
from brainmri.vocabulary import class_words, percent

EXPERT_NAMES = {"cheng": "Cheng (figshare)", "brisc": "BRISC 2025"}


def _dice(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def class_markdown(m: dict) -> str:
    """Accuracy (95% CI) on validation, official and unseen Testing, and ECE after the temperature."""
    cal = m.get("calibration", {})
    rows = [("validation (leak-free)", m.get("validation"), cal.get("val_ece_after"))]
    rows += [
        ("official Testing", m.get("test"), cal.get("test_ece_after")),
        ("unseen Testing", m.get(UNSEEN), cal.get(f"{UNSEEN}_ece_after")),
    ]
    lines = ["| images | n | accuracy (95% CI) | ECE, calibrated |", "|---|---:|---|---:|"]
    for name, r, ece in rows:
        if r:
            lines.append(f"| {name} | {r['n']} | {percent(r['accuracy'], r.get('accuracy_ci95'))} | {percent(ece, digits=2)} |")
    temperature = cal.get("temperature")
    if temperature is not None:
        lines += ["", f"Temperature {temperature:.3f}, fitted on the validation split."]
    return "\n".join(lines)


def outline_markdown(m: dict, pair: dict | None = None, pair_name: str = "") -> str:
    """Per class, on the validation scans both experts outlined: Dice (IoU) against each, the experts' Dice with each
    other, and ``pair``'s Dice against each on the same scans when given."""
    experts = list(EXPERT_NAMES)
    head = " | ".join(f"vs {EXPERT_NAMES[e]}: Dice (IoU)" for e in experts)
    theirs = " | ".join(f"{pair_name} vs {e}" for e in experts) if pair else ""
    lines = [
        f"| validation slices both experts outlined | n | {head} | experts vs each other{' | ' + theirs if pair else ''} |",
        "|---|---:|" + "---|" * len(experts) + "---:|" + ("---:|" * len(experts) if pair else ""),
    ]
    for group, r in m["outline"]["both_experts"].items():
        cells = " | ".join(f"**{_dice(r[f'dice_{e}'])}** ({_dice(r[f'iou_{e}'])})" for e in experts)
        row = f"| {'all tumours' if group == 'all' else class_words(group)} | {r['n']} | {cells} | {_dice(r['experts_dice'])} |"
        if pair:
            row += " " + " | ".join(_dice(pair["both_experts"][group][f"dice_{e}"]) for e in experts) + " |"
        lines.append(row)
    empty = m["outline"]["no_tumour"]
    theirs_empty = f" ({pair_name}: {percent(pair['no_tumour']['empty_share'])})" if pair and "no_tumour" in pair else ""
    lines += [
        "",
        f"Under the fixed rule ({rule_words(asdict(OutlineRule()))}), no-tumour validation slices left empty:"
        f" {percent(empty['empty_share'])} of {empty['n']}{theirs_empty}.",
    ]
    return "\n".join(lines)


def one_encoder_markdown(folder: str | Path, default_json: str | Path | None = None, compact: bool = False) -> str:
    """The whole section; empty when the folder has no metrics. ``compact`` (the README): the outline table beside
    the default segmenter's, the class in one line, and the verdict."""
    m = metrics_if_any(folder)
    if m is None or "outline" not in m:
        return ""
    path = Path(default_json) if default_json else results_dir() / MULTITASK_DEFAULT
    verdict = json.loads(path.read_text()) if path.is_file() else None
    segmenter = verdict["pair"]["segmenter"] if verdict else ""
    pair = verdict["outline"].get(segmenter) if verdict else None
    served = served_rule_line(m["model"])
    if compact:  # its class figures are in the README's headline table
        parts = [outline_markdown(m, pair, segmenter) + (f" {served}" if served else "")]  # one paragraph: the README is short
        return "\n".join(parts + _verdict(verdict))
    parts = [
        f"`{m['model']}`: {m['architecture']} ({m['parameters'] / 1e6:.1f} M parameters, {m['epochs_run']} epochs on CPU,"
        f" kept epoch {m['best_epoch']}). One forward gives the class and the outline; the heatmap's backward is the only other pass.",
        "",
        class_markdown(m),
        "",
        outline_markdown(m, pair, segmenter)
        + (f"\n\n{segmenter}'s figures here are on these slices only, so they differ from its own table's." if pair else ""),
        *(["", served] if served else []),
    ]
    return "\n".join(parts + _verdict(verdict))


def _verdict(verdict: dict | None) -> list[str]:
    if not verdict:
        return []
    acc, passes = verdict["accuracy"], verdict["passes"]
    classifier, segmenter = verdict["pair"]["classifier"], verdict["pair"]["segmenter"]
    dice = ", ".join(f"vs {e} {_dice(d['multitask'])} against {segmenter}'s {_dice(d[segmenter])}" for e, d in verdict["dice_all"].items())
    return [
        "",
        f"**Whether it replaces the pair, by the rule fixed before the first result** (`python -m train.multitask_default`):"
        f" validation accuracy {percent(acc['multitask'])} (n={acc['multitask_n']}) against {classifier}'s"
        f" {percent(acc[classifier])} (n={acc[f'{classifier}_n']}), each as served (float32, from its saved folder; the"
        f" tables give the training run's own pass), {'passes' if passes['class'] else 'fails'}; the outline's"
        f" Dice ({dice}) {'passes' if passes['outline'] else 'fails'}. So "
        + (
            "**the multi-task model** became the default."
            if verdict["default"] == "multitask"
            # Since the outline rule study (train.outline_rules) the outline is this model's whichever classifier
            # answers: what stays is the classifier, not the pair the rule named.
            else f"it did not replace `{classifier}`, which kept classifying; the multi-task model outlines for it."
            + _ensemble_line(classifier)
        ),
    ]


def _ensemble_line(classifier: str) -> str:
    """The default that followed: the classifier and the multi-task model's class head, averaged (registry ENSEMBLES)."""
    spec = ENSEMBLES.get(APP_DEFAULT)
    if spec is None or spec.explainer != classifier:
        return ""
    return (
        f" Since then the app's default is both, **`{APP_DEFAULT}`**: it averages their calibrated probabilities, the one"
        f" encoder's from the forward that outlines, and `{classifier}`'s heatmap explains the mean's class (`docs/serving.md`)."
    )
