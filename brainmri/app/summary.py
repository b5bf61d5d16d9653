"""A prediction in words, for people: the Classify tab's summary, and when the two models disagree."""

from __future__ import annotations

from brainmri.serving import Prediction
from brainmri.vocabulary import NO_TUMOUR, class_words, percent


def summary(result: Prediction) -> str:
    """What ``result`` says, in one plain paragraph of Markdown: the Classify tab's summary."""
    by = f" (`{result.model}`, {result.latency_ms:.0f} ms)"  # an ensemble's heatmap model: in the colour key below
    if not result.in_distribution:
        reasons = "; ".join(result.ood.reasons)
        if result.ood.unfamiliar_only:  # it may be a brain MRI: say so, and what to try
            kept = result.ood.percentile  # the judge's own, as fitted
            rate = f"; the check lets {kept:g} in 100 validation slices through" if kept is not None else ""
            return (
                f"**This image is {result.ood_verdict}**: {reasons}. No tumour class is given for it{by}: an answer here"
                " would not be trustworthy. If it is a brain MRI slice, it differs from those (another sequence or crop,"
                f" marks drawn on it{rate}), and another"
                " slice of the scan may pass."
            )
        return f"**This image {result.ood_verdict}**: {reasons}. No tumour class is given for it{by}."
    p = result.probabilities[result.top_class]
    lines = [f"**Predicted class: {class_words(result.top_class)}** ({percent(p)})."]
    # The tumour-or-not verdict, when it says more than the class line: a tumour class's share of all tumours,
    # or a tumour found likelier than the "no tumour" class in front; never the class line's number again.
    tumour = result.tumour_probability
    if tumour is not None and (result.top_class != NO_TUMOUR or tumour >= 0.5) and round(tumour, 3) != round(p, 3):
        lines.append(f"**Any tumour**: {percent(tumour)}.")  # a tumour class in front implies tumour >= 0.5
    if result.ood is None:
        lines.append("(No out-of-distribution statistics for this model: it cannot tell an MRI from another picture.)")
    text = " ".join(lines) + by
    return text + (f"\n\n**{disagreement(result)}**" if disagreement(result) else "")


def disagreement(result: Prediction) -> str:
    """One plain sentence when the classifier and the segmenter disagree on whether there is a tumour, else ""."""
    if result.outline is None or not result.in_distribution:
        return ""
    if result.top_class == NO_TUMOUR and not result.outline.empty:
        return (
            f"The classifier finds no tumour, but the segmentation model outlines {percent(result.outline.area)} of the image:"
            " the two models disagree, so trust neither alone."
        )
    if result.top_class != NO_TUMOUR and result.outline.empty:
        return (
            f"The classifier says {class_words(result.top_class)}, but the segmentation model outlines no tumour:"
            " the two models disagree, so trust neither alone."
        )
    return ""
