"""The multi-task model's curves and model card, from its folder's history and metrics."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from brainmri.eval.curves import epoch_panels, save_epoch_panels
from brainmri.models.checkpoint import CARD, METRICS, TRAIN_CONFIG
from train.experts import EXPERTS

EXPERT_NAMES = {"cheng": "Cheng et al. (figshare)", "brisc": "BRISC 2025"}


def plot_history(history: list[dict], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_val) = epoch_panels()
    for key, label in (("train_ce", "class: cross-entropy"), ("train_outline", "outline: BCE + soft Dice")):
        ax_loss.plot(epochs, [h[key] for h in history], "o-", label=label)
    ax_val.plot(epochs, [h["val_accuracy"] for h in history], "ko-", label="accuracy")
    for e in EXPERTS:
        ax_val.plot(epochs, [h[f"val_dice_{e}_all"] for h in history], "o-", label=f"Dice vs {e}")
    ax_val.plot(epochs, [h["val_experts_dice_all"] for h in history], ":", color="grey", label="experts vs each other")
    ax_val.plot(epochs, [h["val_empty_no_tumour"] for h in history], "k--", label="no tumour: empty")
    save_epoch_panels(fig, [(ax_loss, "training loss (augmented)"), (ax_val, "validation")], path, legend_size=7)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _dice(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def card_text(m: dict, cfg: dict) -> str:
    v = m["outline"]
    both = v["both_experts"]
    expert_cols = " | ".join(f"Dice vs {e} | IoU vs {e}" for e in EXPERTS)
    rows = [
        f"| {g} | {r['n']} | "
        + " | ".join(f"{_dice(r[f'dice_{e}'])} | {_dice(r[f'iou_{e}'])}" for e in EXPERTS)
        + f" | {_dice(r['experts_dice'])} |"
        for g, r in both.items()
    ]
    classes = m["validation"]
    return "\n".join(
        [
            f"# {m['model']}: one encoder for a brain MRI slice's class, heatmap and tumour outline",
            "",
            "Classifies a brain MRI slice (glioma, meningioma, no tumour, pituitary) and outlines the tumour, from one",
            "EfficientNet-Lite0 classifier (timm) with a U-Net decoder (segmentation-models-pytorch) on its stages.",
            "For research and education, not diagnosis.",
            "",
            f"- Architecture: {m['architecture']}; {m['parameters']:,} parameters; input {m['input_size']} x {m['input_size']} RGB",
            f"- Weights initialised from: {m['initialization']}",
            f"- Trained for {m['epochs_run']} epochs (kept: epoch {m['best_epoch']}) on CPU in {m['amp']} autocast, "
            f"{m['train_seconds']:.0f} s, {m['train_images']} Training images: cross-entropy on all, and the outline where "
            "an expert drew one (the mean of Cheng et al.'s figshare masks, CC BY 4.0, and BRISC 2025's), empty for "
            "no-tumour slices",
            f"- Command: `python -m train.multitask --data DATA --epochs {cfg['epochs']}`",
            "",
            "## Validation (scans with no twin in the training part, in either orientation; `val_split.txt`)",
            "",
            f"Class accuracy: **{classes['accuracy']:.2%}** of {classes['n']} "
            f"(95% CI {classes['accuracy_ci95'][0]:.2%}-{classes['accuracy_ci95'][1]:.2%}).",
            "",
            "The outline against each expert, on the scans both experts outlined, beside the experts' agreement with each other:",
            "",
            f"| class | n | {expert_cols} | experts' Dice |",
            "|---|---:|" + "---:|" * (2 * len(EXPERTS) + 1),
            *rows,
            "",
            f"No-tumour slices left empty: {_pct(v['no_tumour']['empty_share'])} of {v['no_tumour']['n']}.",
            "",
            "```python",
            "from brainmri.models.multitask import UnetOnClassifier  # pip install -r requirements.txt of brain-mri",
            "",
            f'model = UnetOnClassifier.from_pretrained("{m["model"]}")  # or a local folder; model(x) -> (mask logits, class logits)',
            "```",
            "",
        ]
    )


def write_card(folder: Path) -> Path:
    """README.md with the Hub's front matter (huggingface_hub ModelCardData) and the validation figures."""
    m = json.loads((folder / METRICS).read_text())
    cfg = json.loads((folder / TRAIN_CONFIG).read_text())
    data = ModelCardData(
        library_name="brain-mri",
        license="apache-2.0",
        pipeline_tag="image-segmentation",
        tags=["image-segmentation", "image-classification", "timm", "segmentation-models-pytorch", "brain-mri"],
        datasets=["masoudnickparvar/brain-tumor-mri-dataset"],
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_text(m, cfg)}")
    path = folder / CARD
    card.save(path)
    return path
