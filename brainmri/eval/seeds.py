"""The seed report's simple-CNN experiments beside ours: one row per run, one sentence per claim.

The seed report (the notebook this project grew from) trained four hand-built "Sequential" CNNs
and gave each one figure, which it called validation accuracy but measured on the official
Testing split. Our runs are the registry's ``simple_cnn_*`` checkpoints, trained under one
protocol (train/sweeps/seed.yaml: duplicate-aware validation split, augmentation, early
stopping); each row and sentence here is computed from their ``metrics.json``, never typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brainmri.data.split import read_val_split
from brainmri.eval.tables import has_metrics, read_metrics
from brainmri.models.checkpoint import UNSEEN
from brainmri.models.registry import get_spec
from brainmri.settings import checkpoint_dir
from brainmri.vocabulary import minutes, percent

# The seed's figures (its Testing split, which it called validation), for Sequential 1-4.
SEED_ACCURACY = {"simple_cnn_7": 0.7933, "simple_cnn_7_e60": 0.9016, "simple_cnn_10": 0.8268, "simple_cnn_10_e60": 0.9207}
BASE = "simple_cnn_10_e60"  # Sequential 4, the seed's best: every claim is one change to it
COLUMNS = [
    "run",
    "model",
    "val acc",
    "unseen test acc",
    "test acc",
    "params",
    "epochs (best)",
    "train time",
    "device",
    "seed (on Testing)",
]


@dataclass(frozen=True)
class Claim:
    """A question the seed asked: does ``change`` (a registry model) beat ``base``?"""

    question: str
    base: str
    change: str


CLAIMS = [
    Claim("60 epochs against 20 (7 layers)", "simple_cnn_7", "simple_cnn_7_e60"),
    Claim("60 epochs against 20 (10 layers)", "simple_cnn_10", "simple_cnn_10_e60"),
    Claim("10 layers against 7 (20 epochs)", "simple_cnn_7", "simple_cnn_10"),
    Claim("10 layers against 7 (60 epochs)", "simple_cnn_7_e60", "simple_cnn_10_e60"),
    Claim("5x5 kernels against 3x3", BASE, "simple_cnn_10_e60_k5"),
    Claim("7x7 kernels against 3x3", BASE, "simple_cnn_10_e60_k7"),
    Claim("tanh against ReLU", BASE, "simple_cnn_10_e60_tanh"),
    Claim("no padding against same padding", BASE, "simple_cnn_10_e60_nopad"),
    Claim("ReduceLROnPlateau against cosine", BASE, "simple_cnn_10_e60_plateau"),
]
RUNS = list(dict.fromkeys(name for c in CLAIMS for name in (c.base, c.change)))
NOISE = 0.01  # validation differences below a point are within what one seed's run-to-run spread gives here


def _metrics(root: str | Path | None) -> dict[str, dict]:
    """Each run's metrics.json under ``root`` (default: ``brainmri.settings.checkpoint_dir()``)."""
    root = Path(checkpoint_dir() if root is None else root)
    return {name: read_metrics(root / name) for name in RUNS if has_metrics(root / name)}


def seed_rows(root: str | Path | None = None) -> list[dict]:
    """One row per shipped seed run: our validation, unseen-Testing and Testing accuracy beside the seed's figure
    (unseen: empty where the checkpoint's metrics.json has no ``test_unseen`` yet)."""
    rows = []
    for name, m in _metrics(root).items():
        seconds = m.get("train_seconds")
        rows.append(
            {
                "run": get_spec(name).about,
                "model": name,
                "val acc": percent((m.get("validation") or {}).get("accuracy")),
                "unseen test acc": percent((m.get(UNSEEN) or {}).get("accuracy")),
                "test acc": percent((m.get("test") or {}).get("accuracy")),
                "params": f"{m['parameters'] / 1e6:.2f} M" if m.get("parameters") else "",
                "epochs (best)": f"{m.get('epochs_run', '?')} ({m.get('best_epoch', '?')})",
                "train time": minutes(seconds),
                "device": m.get("device", ""),
                "seed (on Testing)": percent(SEED_ACCURACY.get(name)),
            }
        )
    return rows


def stopped_short(metrics: dict) -> bool:
    """Early stopping ended the run before half its planned epochs: a run that plateaued or diverged early."""
    planned = metrics.get("epochs_planned") or 0
    return metrics.get("stopped") == "early stop" and metrics.get("epochs_run", planned) < planned / 2


def short_note(name: str, metrics: dict) -> str:
    return (
        f"early stopping ended {get_spec(name).about.split(':')[0]} at epoch {metrics['epochs_run']} of "
        f"{metrics['epochs_planned']} (best epoch {metrics['best_epoch']})"
    )


def claim_sentences(root: str | Path | None = None) -> list[str]:
    """One sentence per claim whose two runs are shipped: what validation (our basis for choosing) and Testing say,
    and, for Sequential 1-4, whether we agree with the direction the seed's figures show."""
    metrics = _metrics(root)
    out = []
    for claim in CLAIMS:
        if claim.base not in metrics or claim.change not in metrics:
            continue
        b, c = metrics[claim.base], metrics[claim.change]
        val_b, val_c = b["validation"]["accuracy"], c["validation"]["accuracy"]
        diff = val_c - val_b
        verdict = "no clear difference" if abs(diff) < NOISE else ("better" if diff > 0 else "worse")
        sentence = (
            f"**{claim.question}**: {verdict} on validation ({percent(val_c)} vs {percent(val_b)}; "
            f"Testing {percent(c['test']['accuracy'])} vs {percent(b['test']['accuracy'])})"
        )
        if claim.base in SEED_ACCURACY and claim.change in SEED_ACCURACY:
            seed_better = SEED_ACCURACY[claim.change] > SEED_ACCURACY[claim.base]
            figures = f"{percent(SEED_ACCURACY[claim.change])} vs {percent(SEED_ACCURACY[claim.base])}"
            seed = f"the seed found it {'better' if seed_better else 'worse'} ({figures})"
            agrees = verdict == ("better" if seed_better else "worse")
            sentence += f"; {seed}: we {'agree' if agrees else 'do not agree'}"
        short = [n for n, m in ((claim.base, b), (claim.change, c)) if stopped_short(m)]
        if short:
            sentence += ". " + "; ".join(f"Weak evidence: {short_note(n, metrics[n])}" for n in short)
        out.append(sentence + ".")
    return out


NOTE = (
    "The seed's figure was measured on the official **Testing** split (the seed called it validation); ours are "
    "chosen on a validation split cut from Training and reported on Testing and on its unseen subset (no exact, near or "
    "mirrored twin in Training). One run each "
    "(seed 0; the device column says where): differences under a point of validation accuracy are within run-to-run noise. "
    "Sequential 1-4 reproduce the seed's depth and epochs; each claim after them is one change to Sequential 4."
)


def seed_markdown(root: str | Path | None = None) -> str:
    """The table, the note and the sentences, as Markdown for docs/experiments.md and the Experiments tab."""
    rows = seed_rows(root)
    if not rows:
        return "No seed runs shipped yet (train/sweeps/seed.yaml)."
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    note = f"{NOTE} {same_validation_note(root)}"
    return "\n".join(lines) + "\n\n" + note + "\n\n" + "\n".join(f"- {s}" for s in claim_sentences(root)) + "\n"


def same_validation_note(root: str | Path | None = None) -> str:
    """Whether the claims compare the runs on the same validation images (each folder's ``val_split.txt``)."""
    root = Path(checkpoint_dir() if root is None else root)
    listed = {name: read_val_split(root / name) for name in _metrics(root)}
    unrecorded = [name for name, images in listed.items() if images is None]
    if unrecorded:
        return f"Which validation images {', '.join(unrecorded)} used is not recorded (no val_split.txt)."
    if len({tuple(sorted(v)) for v in listed.values()}) == 1:
        return f"All {len(listed)} runs are chosen on the same {len(next(iter(listed.values())))} validation images."
    return "Their validation images differ, so a claim that pairs two runs compares them on different images."
