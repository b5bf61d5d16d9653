"""Figures and model cards written beside each checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from huggingface_hub import EvalResult, ModelCard, ModelCardData  # noqa: E402

from brainmri.eval.curves import epoch_panels, save_epoch_panels  # noqa: E402
from brainmri.eval.metrics import ECE_BINS, expected_calibration_error, reliability_bins  # noqa: E402
from brainmri.eval.tables import read_metrics  # noqa: E402
from brainmri.models.checkpoint import CARD, METRICS, OOD_CONFIG, OOD_TENSORS, UNSEEN, VAL_SPLIT, read_config  # noqa: E402
from brainmri.vocabulary import class_words  # noqa: E402


def plot_history(history: list[dict], path: str | Path) -> None:
    """Loss and accuracy per epoch, train and validation."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = epoch_panels()
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (augmented)")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], "o-", label="train (augmented)")
    ax_acc.plot(epochs, [h["val_acc"] for h in history], "o-", label="validation")
    save_epoch_panels(fig, [(ax_loss, "loss"), (ax_acc, "accuracy")], path)


def plot_confusion(cm: np.ndarray, class_names: list[str], path: str | Path, title: str) -> None:
    """The (C, C) confusion matrix ``cm`` (rows true, columns predicted), the classes in the app's words."""
    words = [class_words(c) for c in class_names]
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), words, rotation=30)
    ax.set_yticks(range(len(class_names)), words)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix, {title}")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def reliability_diagram(curves: dict[str, np.ndarray] | np.ndarray, labels: np.ndarray, path: str | Path, n_bins: int = ECE_BINS) -> None:
    """Accuracy against confidence per bin (image count at the foot of each bar), one panel per set of probabilities
    (e.g. before and after calibration).

    Args:
        curves: panel title -> (N, C) probabilities, or one (N, C) array.
        labels: (N,) true class indices.
    """
    curves = curves if isinstance(curves, dict) else {"": curves}
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.6), squeeze=False)
    edges = np.linspace(0, 1, n_bins + 1)
    for ax, (title, probs) in zip(axes[0], curves.items()):
        mean_conf, accuracy, count = reliability_bins(probs, labels, n_bins)
        full = count > 0
        ax.bar(edges[:-1][full], accuracy[full], width=1 / n_bins, align="edge", edgecolor="black", alpha=0.7, label="accuracy")
        ax.bar(
            edges[:-1][full],
            mean_conf[full] - accuracy[full],
            bottom=accuracy[full],
            width=1 / n_bins,
            align="edge",
            color="red",
            alpha=0.3,
            label="gap to confidence",
        )
        for left, n in zip(edges[:-1][full], count[full]):  # few images in a bin make its bar noise: say how many
            ax.text(left + 0.5 / n_bins, 0.01, str(n), ha="center", va="bottom", rotation=90, fontsize=6)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top class)", ylabel="accuracy")
        ax.set_title(f"{title}\nECE {expected_calibration_error(probs, labels, n_bins):.4f}, n={len(labels)}".strip(), fontsize=9)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


DATASET = "masoudnickparvar/brain-tumor-mri-dataset"  # the Hub's id of the data (Kaggle's, CC0)
CARD_TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}\n"  # front matter from ModelCardData, then the card's text


def write_card(data: ModelCardData, body: str, path: Path) -> Path:
    """``path``, a model card from its metadata (the Hub reads ``model-index`` from ``data.eval_results``) and its
    Markdown, rendered by huggingface_hub's ``ModelCard.from_template``; ``ModelCard.load(path)`` reads it back."""
    card = ModelCard.from_template(data, template_str=CARD_TEMPLATE, body=body.strip("\n"))
    path.write_text(str(card).rstrip("\n") + "\n")  # jinja drops the template's last newline
    return path


def _ci_text(ci: list[float] | None) -> str:
    return f", 95% CI {ci[0]:.3f}-{ci[1]:.3f}" if ci else ""


def classifier_eval_results(metrics: dict) -> list[EvalResult]:
    """model-index results: accuracy on unseen Testing (n and its bootstrap CI in the name) and on official Testing."""
    results = []
    # Results that share task, dataset, config and split are one result to the Hub: the subset is the config.
    for key, subset, split_name, label in (
        (UNSEEN, "unseen", "Testing without Training twins, mirrored ones included", "Unseen test accuracy"),
        ("test", "official", "official Testing split", "Test accuracy"),
    ):
        r = metrics.get(key)
        if r:
            results.append(
                EvalResult(
                    task_type="image-classification",
                    dataset_type=DATASET,
                    dataset_name=f"Brain Tumor MRI ({split_name})",
                    dataset_config=subset,
                    dataset_split="test",
                    metric_type="accuracy",
                    metric_value=round(r["accuracy"], 4),
                    metric_name=f"{label} (n={r['n']}{_ci_text(r.get('accuracy_ci95'))})",
                )
            )
    return results


def _resize_words(pcfg: dict) -> str:
    """How timm's eval transform of ``pcfg`` (the folder's ``pretrained_cfg``) brings an image to the input size
    (timm.data.transforms_factory.transforms_imagenet_eval: its crop modes center, the default, squash and border)."""
    side, interp = pcfg["input_size"][1], pcfg["interpolation"]
    scaled = math.floor(side / pcfg["crop_pct"])  # as timm scales before it crops
    crop = f", then the centre {side} x {side} (crop_pct {pcfg['crop_pct']})" if scaled != side else ""
    mode = pcfg.get("crop_mode") or "center"
    if mode == "squash":
        return f"{interp} resize of the whole image to {scaled} x {scaled}{crop}"
    if mode == "border":
        return f"{interp} resize of the longer side to {scaled}, padded to a square{crop}"
    return f"{interp} resize of the shorter side to {scaled}, then the centre {side} x {side} (crop_pct {pcfg['crop_pct']})"


def write_model_card(folder: str | Path) -> Path:
    """README.md with Hub front matter (``ModelCardData``, ``model-index`` results) from config.json and metrics.json."""
    folder = Path(folder)
    config = read_config(folder)
    metrics = read_metrics(folder)
    name = config.get("registry_name", config["architecture"])
    data = ModelCardData(
        library_name="timm",
        license="apache-2.0",
        pipeline_tag="image-classification",
        tags=["image-classification", "timm", "brain-mri", "grad-cam"],
        datasets=[DATASET],
        model_name=name,
        eval_results=classifier_eval_results(metrics) or None,
    )
    lines = [*_card_header(name, config, metrics), *_card_results(folder, metrics), *_card_usage(folder, name)]
    return write_card(data, "\n".join(lines), folder / CARD)


def _card_header(name: str, config: dict, metrics: dict) -> list[str]:
    """The card's title and what the model is: architecture, initialisation, input, training."""
    pcfg = config["pretrained_cfg"]
    return [
        f"# {name}: brain MRI tumour classifier",
        "",
        "Classifies a brain MRI slice as " + ", ".join(config["label_names"]) + ". For research and education, not diagnosis.",
        "",
        f"- Architecture: timm `{config['architecture']}`, {metrics.get('parameters', 0):,} parameters",
        f"- Weights initialised from: {config.get('initialization', 'unknown')}",
        *([f"- Distilled from: {metrics['distilled_from']}"] if metrics.get("distilled_from") else []),
        f"- Input: {pcfg['input_size'][1]} x {pcfg['input_size'][2]} RGB, {_resize_words(pcfg)}, mean {pcfg['mean']}, std {pcfg['std']}",
        f"- Trained for {metrics.get('epochs_run')} epochs (best validation epoch {metrics.get('best_epoch')})"
        f" on {metrics.get('device')}, {metrics.get('train_seconds')} s",
        "",
    ]


def _card_results(folder: Path, metrics: dict) -> list[str]:
    """The card's results: a row a set, the calibration, unseen Testing by class, and why unseen is the honest row."""
    lines = [
        "## Results",
        "",
        "| set | n | accuracy (95% CI) | loss | ECE |",
        "|---|---:|---|---:|---:|",
    ]
    for key, label in (
        (UNSEEN, "**unseen Testing** (no twin in Training, mirrored or not)"),
        ("test", "official Testing"),
        ("validation", "validation, leak-free (`val_split.txt`)" if (folder / VAL_SPLIT).is_file() else "validation (cut from Training)"),
        ("validation_leaky", "validation as first measured, mirrored twins of training images included"),
    ):
        r = metrics.get(key)
        if r:
            ci = f" ({r['accuracy_ci95'][0]:.3f}-{r['accuracy_ci95'][1]:.3f})" if "accuracy_ci95" in r else ""
            loss, ece = (f"{r[k]:.4f}" if k in r else "-" for k in ("loss", "ece"))
            lines.append(f"| {label} | {r.get('n', '')} | {r['accuracy']:.4f}{ci} | {loss} | {ece} |")
    cal = metrics.get("calibration")
    if cal:
        lines += [
            "",
            f"Calibration: temperature T = {cal['temperature']:.3f} fitted on validation (`calibration.json`, probabilities"
            " = softmax(logits / T)); ECE before -> after: validation"
            f" {cal['val_ece_before']:.4f} -> {cal['val_ece_after']:.4f}"
            + "".join(
                f", {label} {cal[f'{key}_ece_before']:.4f} -> {cal[f'{key}_ece_after']:.4f}"
                for key, label in (("test", "Testing"), (UNSEEN, "unseen Testing"))
                if f"{key}_ece_before" in cal
            )
            + ". Reliability diagram: `reliability.png`.",
        ]
    per_class = (metrics.get(UNSEEN) or {}).get("per_class", {})
    if per_class and "accuracy_ci95" in next(iter(per_class.values())):
        lines += [
            "",
            "Unseen Testing by class: "
            + "; ".join(
                f"{c} {r['accuracy']:.1%} of {r['n']}" + (f" ({r['accuracy_ci95'][0]:.0%}-{r['accuracy_ci95'][1]:.0%})" if r["n"] else "")
                for c, r in per_class.items()
            )
            + ". Few meningioma and no-tumour images are unseen, so their intervals are wide.",
        ]
    return [
        *lines,
        "",
        "Most Testing images have a twin in Training: byte-identical, near-identical, or the same slice mirrored left-right",
        "(training flips images, so a mirrored twin is a training image). The official Testing accuracy therefore overstates",
        "performance on unseen scans; the unseen row counts only the Testing images with no twin in either orientation.",
        "",
    ]


def _card_usage(folder: Path, name: str) -> list[str]:
    """The card's usage: loading it with timm, reproducing its figures, the folder's files."""
    return [
        "## Use",
        "",
        "```python",
        "import timm, torch",
        "import brainmri  # only needed for the simple_cnn_* baselines, which are not timm built-ins\n"
        if name.startswith("simple_cnn")
        else "",
        f'model = timm.create_model("hf-hub:OWNER/{name}", pretrained=True).eval()',
        "cfg = timm.data.resolve_data_config(model=model)",
        "transform = timm.data.create_transform(**cfg)",
        "```",
        "",
        "Reproduce these numbers: `python -m train.evaluate FOLDER --data DATA`. Files: `config.json`, `model.safetensors` (fp16),",
        "`metrics.json`, `history.csv`, `train_config.json`, `curves.png`, `confusion.png`, `calibration.json`,",
        "`reliability.png`, `manifest.json` (sha256)"
        + (f", `{OOD_CONFIG}` + `{OOD_TENSORS}` (the out-of-distribution check's statistics)." if (folder / OOD_CONFIG).is_file() else "."),
        "",
    ]


# Published figures on Cheng et al.'s figshare masks, the anchors the segmentation table stands beside (issue 19).
SEGMENTATION_ANCHORS = [
    ("Convolutional autoencoder (Badža and Barjaktarović)", "0.717-0.729", "published, figshare, their own split"),
    ("SAM, prompted zero-shot from BiomedCLIP saliency", "0.55", "published, figshare"),
    ("smp U-Net on ImageNet Lite0, 6 epochs, no negatives", "0.81", "an independent quick baseline, figshare-grouped split"),
]


# The experts whose masks the metrics hold, by the key their figures sit under (one today: Cheng et al.'s).
EXPERTS = {"validation": "Cheng et al. figshare masks, validation scans of the mirror-aware split (val_split.txt)"}
EXPERT_CONFIGS = {"validation": "cheng-figshare-masks"}  # one model-index result per expert


def segmentation_eval_results(validation: dict, expert: str = "validation") -> list[EvalResult]:
    """model-index results: Dice against an expert's masks, on all tumours and per class, n and CI in each name."""
    rows = [("all tumours", validation["tumour"]), *validation["per_class"].items()]
    return [
        EvalResult(
            task_type="image-segmentation",
            dataset_type=DATASET,
            dataset_name=f"Brain Tumor MRI, {EXPERTS[expert]}",
            dataset_config=EXPERT_CONFIGS[expert],
            dataset_split="validation",
            metric_type="dice",
            metric_value=round(r["dice"], 4),
            metric_name=f"Dice, {name} (n={r['n']}, 95% CI {r['dice_ci95'][0]:.3f}-{r['dice_ci95'][1]:.3f})",
        )
        for name, r in rows
    ]


def segmentation_markdown(folder: str | Path) -> str:
    """The segmenter's validation figures per class, beside the published anchors; empty when it has no metrics."""
    if not (Path(folder) / METRICS).is_file():
        return ""
    m = read_metrics(folder)  # a corrupt file: a ValueError naming it
    v = m["validation"]
    rows = [("all tumours", v["tumour"]), *v["per_class"].items()]
    lines = [
        f"`{m['model']}` ({m['architecture']}, {m['parameters'] / 1e6:.1f} M parameters, {m['epochs_run']} epochs on CPU,"
        f" best epoch {m['best_epoch']}), on the validation scans of the mirror-aware split (`val_split.txt`):",
        "",
        "| validation slices | n | Dice (95% CI) | IoU | tumour outlined | area error |",
        "|---|---:|---|---:|---:|---:|",
        *[
            f"| {name} | {r['n']} | {r['dice']:.3f} ({r['dice_ci95'][0]:.3f}-{r['dice_ci95'][1]:.3f}) | {r['iou']:.3f}"
            f" | {r['detection_rate']:.1%} | {r['area_error_abs']:.0%} |"
            for name, r in rows
        ],
        f"| no tumour: left empty | {v['no_tumour']['n']} | | | {v['no_tumour']['empty_share']:.1%} empty | |",
        "",
        "Area error: mean |outlined - true area| / true area. Anchors, Dice on figshare but not on this split: "
        + "; ".join(f"{what} {dice} ({where})" for what, dice, where in SEGMENTATION_ANCHORS)
        + ".",
    ]
    return "\n".join(lines)
