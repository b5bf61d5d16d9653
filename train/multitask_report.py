"""The multi-task model's curves and model card, from its folder's history and metrics."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData

from brainmri.data.split import DEFAULT_RULE, split_rule
from brainmri.eval.curves import epoch_panels, save_epoch_panels
from brainmri.eval.one_encoder import EXPERT_NAMES, class_markdown, outline_markdown
from brainmri.eval.outline_rules import served_rule_line
from brainmri.eval.report import DATASET, classifier_eval_results, write_card
from brainmri.models.checkpoint import CARD, METRICS, TRAIN_CONFIG
from train.experts import EXPERTS


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


def outline_eval_results(m: dict, rule: str = DEFAULT_RULE) -> list[EvalResult]:
    """model-index results: the outline's Dice against each expert on the validation scans both outlined, per class;
    ``rule``: the split's twin rule (brainmri.data.split)."""
    return [
        EvalResult(
            task_type="image-segmentation",
            dataset_type=DATASET,
            dataset_name=f"Brain Tumor MRI, {EXPERT_NAMES[e]} masks, validation scans of the {rule} split",
            dataset_config=f"{e}-masks",
            dataset_split="validation",
            metric_type="dice",
            metric_value=round(r[f"dice_{e}"], 4),
            metric_name=f"Dice vs {e}, {group} (n={r['n']}; experts vs each other {r['experts_dice']:.3f})",
        )
        for e in EXPERTS
        for group, r in m["outline"]["both_experts"].items()
        if r[f"dice_{e}"] is not None
    ]


def second_schedule(cfg: dict) -> str:
    """The command's options for a run started from an earlier run's folder (train.multitask --init-from), its
    teacher's (--teacher) and its moving average's (--ema-decay, --ema-warmup)."""
    extra = f" --teacher TEACHER --distill-weight {cfg.get('distill_weight', 0.5):g}" if cfg.get("teacher") else ""
    if cfg.get("ema_decay"):
        extra += f" --ema-decay {cfg['ema_decay']:g}" + (" --ema-warmup" if cfg.get("ema_warmup") else "")
    if not cfg.get("init_from"):
        return extra
    return f" --init-from FOLDER --lr {cfg['lr']:g} --dice {cfg.get('dice', 'batch')}{extra}"


EMA_NOTE = "'s exponential moving average of the weights"


def card_text(m: dict, cfg: dict) -> str:
    split = split_rule(cfg)
    return "\n".join(
        [
            f"# {m['model']}: one encoder for a brain MRI slice's class, heatmap and tumour outline",
            "",
            "Classifies a brain MRI slice (glioma, meningioma, no tumour, pituitary) and outlines the tumour, from one",
            "EfficientNet-Lite0 classifier (timm) with a U-Net decoder (segmentation-models-pytorch) on its stages:",
            "one forward pass gives both. For research and education, not diagnosis.",
            "",
            f"- Architecture: {m['architecture']}; {m['parameters']:,} parameters; input {m['input_size']} x {m['input_size']} RGB",
            f"- Weights initialised from: {m['initialization']}",
            *([f"- Class head distilled from: {m['distilled_from']}"] if m.get("distilled_from") else []),
            f"- Trained for {m['epochs_run']} epochs (kept: epoch {m['best_epoch']}{EMA_NOTE if cfg.get('ema_decay') else ''},"
            f" by validation accuracy + mean Dice) on {'a GPU' if m.get('device', 'cpu').startswith('cuda') else 'CPU'}"
            f" in {m['amp']} autocast, {m['train_seconds']:.0f} s, {m['train_images']} Training images: cross-entropy on all,"
            " and the outline where an expert drew one (the mean of Cheng et al.'s figshare masks, CC BY 4.0, and BRISC"
            " 2025's), empty for no-tumour slices",
            f"- Command: `python -m train.multitask --data DATA --epochs {cfg['epochs']}{second_schedule(cfg)}`; then `train.calibrate`,"
            " `train.evaluate` and `train.ood fit` on the folder",
            "",
            "## The class",
            "",
            f"Validation: the scans of the {split} split (`val_split.txt`)"
            + (", no twin in the training part in either orientation" if split == DEFAULT_RULE else "")
            + ". Unseen Testing: the Testing images with no twin in Training, mirrored or not.",
            "",
            class_markdown(m),
            "",
            "## The outline",
            "",
            "Against each expert, on the validation scans both experts outlined, beside the experts' agreement with each other:",
            "",
            outline_markdown(m),
            "",
            *([served + " The rule is this folder's `outline.json`.", ""] if (served := served_rule_line(m["model"])) else []),
            "```python",
            "from brainmri.models.multitask import UnetOnClassifier  # pip install -r requirements.txt of brain-mri",
            "",
            f'model = UnetOnClassifier.from_pretrained("OWNER/{m["model"]}")  # or a local folder; model(x) -> (mask logits, class logits)',
            "```",
            "",
        ]
    )


def write_multitask_card(folder: Path) -> Path:
    """README.md with the Hub's front matter (huggingface_hub ModelCardData) and the validation figures."""
    m = json.loads((folder / METRICS).read_text())
    cfg = json.loads((folder / TRAIN_CONFIG).read_text())
    data = ModelCardData(
        library_name="brain-mri",
        license="apache-2.0",
        pipeline_tag="image-segmentation",
        tags=["image-segmentation", "image-classification", "timm", "segmentation-models-pytorch", "brain-mri"],
        datasets=[DATASET],
        model_name=m["model"],
        eval_results=classifier_eval_results(m) + outline_eval_results(m, split_rule(cfg)),
    )
    return write_card(data, card_text(m, cfg), folder / CARD)
