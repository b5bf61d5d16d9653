"""The pointing game's table (reports.cam_localisation's JSON), as the Experiments tab and docs/heatmaps.md show it."""

from __future__ import annotations

from brainmri.explain import shared_parent
from brainmri.vocabulary import DATASET_LABELS, NO_TUMOUR, percent

TUMOURS = tuple(c for c in DATASET_LABELS if c != NO_TUMOUR)  # the classes with a box to point into


def layer_label(layer: str) -> str:
    """A CAM layer list ("a.b.bn2+a.b.blocks.4") as a table cell, the module they share named once
    (brainmri.explain.shared_parent)."""
    shared, parts = shared_parent(layer)
    cell = f"`{'+'.join(parts)}`"
    return f"{cell} in `{shared}`" if shared else cell


def localisation_table(runs: list[dict]) -> str:
    """Runs of the pointing game (reports.cam_localisation's JSON) as a Markdown table, on their report halves: per
    model, layer and method, the share of boxed slices whose heatmap peak falls in the tumour box, per class, the
    mass in the box, and chance. The Experiments tab and docs/heatmaps.md show it."""
    lines = [
        f"| model | layer | method | heatmap px | n | peak in box | {' | '.join(TUMOURS)} | mass in box | chance: centre | chance: head |",
        "|---|---|---|---|---|---|" + "---|" * len(TUMOURS) + "---|---|---|",
    ]
    for run in runs:
        r = run["report"]
        per = r.get("per_class", {})
        cls = [percent((per.get(c) or {}).get("hit")) for c in TUMOURS]
        lines.append(
            f"| {run['model']} | {layer_label(run['layer'])} | {run['method']} | {run.get('cam_size') or ''} | {r['n']} | "
            f"**{percent(r['hit'])}** | "
            f"{' | '.join(cls)} | "
            f"{percent(r['mass'])} | {percent(r['centre'])} | {percent(r['head'])} |"
        )
    return "\n".join(lines) + "\n"
