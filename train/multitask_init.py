"""Where a multi-task run's weights start, and the model card's line that says so.

A run may start from ImageNet, from an earlier multi-task folder (``--init-from``: a further schedule on its weights),
or with its encoder and class head from a finished classifier (``--init-classifier``). That either folder was cut by
this run's validation split is checked where the run's config is (train.multitask.check_init_split).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from torch import nn

from brainmri.models.checkpoint import METRICS, label_names, load_checkpoint, read_config

_logger = logging.getLogger(__name__)


def load_class_path(model: nn.Module, folder: Path) -> None:
    """The encoder and class head from a finished classifier of the same backbone (a timm folder); the decoder keeps
    what it had (ImageNet's encoder is replaced, a random or --init-from decoder stays)."""
    backbone, theirs = model.classifier.pretrained_cfg.get("architecture"), read_config(folder).get("architecture")
    if theirs != backbone:  # a multi-task folder has none: it is not a classifier folder
        raise ValueError(f"--init-classifier {folder} is a {theirs or 'folder without a timm architecture'}, not this model's {backbone}")
    if label_names(folder) != model.label_names:  # a head in another class order would answer with the classes permuted
        raise ValueError(f"--init-classifier {folder}: its classes {label_names(folder)} are not this model's {model.label_names}")
    model.classifier.load_state_dict(load_checkpoint(folder).state_dict())
    _logger.info("class path (encoder and head) from %s", folder)


ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")
_EARLIER = re.compile(
    r"^an earlier (?P<model>\S+) run: (?P<start>.*?)(, trained (?P<trained>.*?))?; this run is (a|the) \w+ schedule on its weights$"
)


def started_from(folder: Path) -> str:
    """The card's line on where an --init-from run's weights came from, read from that folder's own record (the
    folder may be replaced by this run's afterwards). A chain of schedules reads as one start and its schedules:
    "an earlier multitask_lite0 run: ImageNet encoder (...), trained 10 epochs (4764 s), then 8 epochs (6775 s);
    this run is the third schedule on its weights"."""
    earlier, n = _earlier_run(folder)
    if n is None:
        return earlier
    ordinal = ORDINALS[n - 1] if n <= len(ORDINALS) else f"{n}th"
    return f"{earlier}; this run is the {ordinal} schedule on its weights"


def _earlier_run(folder: Path) -> tuple[str, int | None]:
    """ "an earlier <model> run: <start>, trained <epochs>" of a finished folder, and the number this run's schedule
    would have in its chain (None when the folder has no record)."""
    try:
        before = json.loads((folder / METRICS).read_text())
    except (OSError, ValueError):
        return f"the weights of {folder.name}", None
    model, start = before.get("model", folder.name), before.get("initialization", "its own start")
    these = f"{before.get('epochs_run', '?')} epochs ({before.get('train_seconds', 0):.0f} s)"
    earlier = _EARLIER.match(start)
    if earlier and earlier["model"] == model:  # the folder was itself a later schedule: extend its chain
        start, trained = earlier["start"], f"{earlier['trained']}, then {these}" if earlier["trained"] else these
    else:
        trained = these
    return f"an earlier {model} run: {start}, trained {trained}", trained.count(", then ") + 2


def stitched_from(classifier: Path, decoder: Path | None) -> str:
    """The card's line for a run whose class path came from a classifier (--init-classifier) and whose decoder came
    from the multi-task folder ``decoder`` (--init-from) or was new."""
    try:
        before = json.loads((classifier / METRICS).read_text())
        trained = f"{before.get('initialization', 'its own start')}, trained {before.get('epochs_run', '?')} epochs"
    except (OSError, ValueError):
        trained = "its own start"
    made = _earlier_run(decoder)[0] if decoder else "new (random)"
    return f"encoder and class head: the classifier {classifier.name} ({trained}); decoder: {made}; then this run"
