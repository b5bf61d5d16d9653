"""The words the app, the API and the reports use, each said once: the classes as a reader says them, the OOD
verdict, the tumour probability and how a share is printed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

NO_TUMOUR = "notumor"  # the dataset's label for slices without a tumour (an empty mask, for the segmenter)
CLASS_WORDS = {"glioma": "glioma", "meningioma": "meningioma", "pituitary": "pituitary tumour", NO_TUMOUR: "no tumour"}
DATASET_LABELS = tuple(sorted(CLASS_WORDS))  # the class folders in the order brainmri.data.records reads them
CLASSES_IN_WORDS = ", ".join(list(CLASS_WORDS.values())[:-1]) + f" or {CLASS_WORDS[NO_TUMOUR]}"  # "glioma, ... or no tumour"
BRAIN_MRI = "a brain MRI"
NOT_MRI = f"not {BRAIN_MRI}"  # the OOD verdict, short: a table cell, a caption
LOOKS_NOT_MRI = f"does not look like {BRAIN_MRI}"  # the OOD verdict in a sentence, and the API's label
# The verdict when only the features' distance flagged it: the picture passes as an MRI by its own measures (grey,
# not flat), so it may well be one, unlike the training slices (another sequence or crop, marks drawn on it). The
# threshold lets 99 in 100 validation slices through (brainmri.ood.DEFAULT_PERCENTILE), so about 1 real slice in 100 is
# flagged by design.
UNLIKE_TRAINING = "unlike the brain MRI slices the models learned from"  # after "is"; the API's label
UNLIKE_TRAINING_SHORT = "unlike the training slices"  # a table cell, a caption


def class_words(label: str) -> str:
    """A dataset label as a reader says it ("notumor" -> "no tumour"); an unknown label as it is."""
    return CLASS_WORDS.get(label, label)


def any_tumour_probability(probabilities: Mapping[str, float]) -> float | None:
    """P(any tumour) = 1 - P(no tumour); None for labels without a no-tumour class."""
    return 1.0 - probabilities[NO_TUMOUR] if NO_TUMOUR in probabilities else None


def percent(value: float | None, ci: Sequence[float] | None = None, digits: int = 1) -> str:
    """A share as a percent: one decimal ("99.2%"), its 95% interval after it when given ("99.2% (98.7-99.6)");
    "" for None."""
    if value is None:
        return ""
    return f"{100 * value:.{digits}f}%" + (f" ({100 * ci[0]:.{digits}f}-{100 * ci[1]:.{digits}f})" if ci else "")


def minutes(seconds: float | str | None) -> str:
    """A run's wall time in minutes to one decimal ("20.6 min"), as every table gives it, or in seconds under one ("6 s":
    GPU runs of seconds sit beside CPU runs of hours); "" when not recorded."""
    if seconds in (None, ""):
        return ""
    return f"{float(seconds) / 60:.1f} min" if round(float(seconds)) >= 60 else f"{float(seconds):.0f} s"  # 59.7: "1.0 min"


def initialisation_words(initialization: str | None) -> str:
    """A run's initialisation in a word or two: "ImageNet (offline pack ...)" -> "ImageNet", "random (no ...)" -> "random"."""
    return (initialization or "").split(" (")[0]
