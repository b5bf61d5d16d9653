"""Training configuration: one dataclass, a comment per field, overridable from the command line.

The comment beside each field is its ``--help`` text (:func:`field_help` reads it from this file's source), so
the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import json
import tokenize
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import get_type_hints

from brainmri.data.split import DEFAULT_RULE, DEFAULT_VAL_FRACTION
from brainmri.models.registry import DEFAULT_CLASSIFIER
from brainmri.settings import default_data


class RunConfig:
    """What every trainer's config dataclass shares: where its run writes (``out``, by default ``runs/<model>``) and
    the record of itself it leaves there (train_config.json)."""

    model: str
    out: str

    def output_dir(self) -> Path:
        return Path(self.out or f"runs/{self.model}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


class SegmenterRunConfig(RunConfig):
    """A segmenter trainer's config (train.segment, train.multitask): ``input_size`` 0 is the registry's size
    (brainmri.models.segmenters), resolved here so that the run and its train_config.json use the real one."""

    input_size: int

    def __post_init__(self) -> None:
        from brainmri.models.segmenters import SEGMENTERS  # an unknown model is reported where the run builds it

        if not self.input_size and self.model in SEGMENTERS:
            self.input_size = SEGMENTERS[self.model].input_size


@dataclass
class TrainConfig(RunConfig):
    model: str = DEFAULT_CLASSIFIER  # registry name (brainmri.models.registry): the app default's classifier unless told
    data: str = field(default_factory=default_data)  # image folder or Hub dataset id (brainmri.settings.default_data)
    out: str = ""  # output folder; default runs/<model>
    epochs: int = 10  # most epochs to run
    batch_size: int = 32  # images per training step
    lr: float = 1e-3  # peak learning rate of AdamW
    weight_decay: float = 0.05  # AdamW's decoupled weight decay
    warmup_epochs: float = 1.0  # linear warm-up, then the schedule
    schedule: str = "cosine"  # timm's "cosine" or "plateau" (the rate halves after two epochs without a better validation accuracy)
    label_smoothing: float = 0.1  # of the cross-entropy targets (why calibration finds T < 1)
    teacher: str = ""  # classifier folder(s) cut by this split, comma-separated: their mean softmax is a soft target (train.distill)
    distill_weight: float = 0.5  # with --teacher: share of the loss on the teacher's soft targets, the rest on the labels
    ema_decay: float = 0.0  # 0: none; else validate, keep and ship an exponential moving average of the weights (timm ModelEmaV3)
    ema_warmup: bool = False  # the average's decay grows with the updates up to ema_decay (train.schedule.moving_average)
    patience: int = 4  # early stopping: epochs without a better validation accuracy (a tie: lower loss)
    val_fraction: float = DEFAULT_VAL_FRACTION  # share of Training held out for validation, twin groups kept whole
    split: str = DEFAULT_RULE  # twin rule of the split (brainmri.data.split): "mirror-aware", or "as-is" of the first shipped models
    seed: int = 0  # seeds the split, the initialisation and the augmentation
    pretrained: bool = False  # ImageNet init: the registry's offline package where it names one (the Lites), else timm's download
    image_size: int = 0  # 0: the registry's input size
    limit_per_class: int = 0  # 0: all images; else a few per class (tests, --quick)
    max_train_batches: int = 0  # 0: whole epoch; else stop each epoch early (tests)
    channels_last: bool = True  # faster convolutions on CPU and GPU
    cuda_graphs: bool = False  # on a GPU: replay each training step's forward and backward from a CUDA graph (train.graphs)
    amp: str = "auto"  # "auto": bf16 autocast on GPU, fp32 on CPU; "bf16": autocast on either (2x on an avx512_bf16 CPU); "none": fp32
    resume: bool = False  # continue from the last finished epoch in <out>/resume
    evaluate_test: bool = True  # evaluate the best epoch on Testing (and its unseen subset)
    fit_ood: bool = True  # fit the OOD check's statistics (train.ood) on the split; 6.6 MB beside a 1280-feature model
    # How the run uses the machine (the sweep sets these), not what it learns:
    data_on_device: bool = False  # keep the decoded uint8 data on the training device, batched there (one process, no DataLoader)
    grad_checkpointing: bool = False  # recompute activations in backward (timm set_grad_checkpointing): less memory, ~1/3 more compute
    time_budget_s: float = 0.0  # 0: none; else after epoch 1 shorten the schedule to the epochs that fit, and stop at the budget
    save_resume: bool = True  # write the --resume state after each epoch (sweeps turn it off: seconds per epoch on big models)


def _parse_bool(text: str) -> bool:
    if text.lower() in {"1", "true", "yes"}:
        return True
    if text.lower() in {"0", "false", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


@functools.cache
def field_help(config: type = TrainConfig) -> dict[str, str]:
    """Each field's comment in the source of the dataclass ``config``: ``{"epochs": "most epochs to run", ...}``."""
    source = inspect.getsource(config)
    comments = {
        t.start[0]: t.string.lstrip("# ").strip()
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type == tokenize.COMMENT
    }
    return {
        node.target.id: comments.get(node.lineno, "")
        for node in ast.parse(source).body[0].body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


def build_parser(description: str = "", config: type = TrainConfig) -> argparse.ArgumentParser:
    """The ``--field value`` parser of a config dataclass (TrainConfig, train.segment's SegmentConfig): each option's
    help is its field's comment, with the default (unless the comment names it)."""
    parser = argparse.ArgumentParser(description=description)
    hints, helps = get_type_hints(config), field_help(config)
    for f in dataclasses.fields(config):
        kind = hints[f.name]
        default = f.default_factory() if f.default is MISSING else f.default  # data's: read now
        text = helps[f.name].replace("%", "%%")
        text += "" if "default" in text else " (default: %(default)s)"  # the comment may say it better ("default runs/<model>")
        flag = f"--{f.name.replace('_', '-')}"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, type=_parse_bool, nargs="?", const=True, default=default, metavar="BOOL", help=text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=default, metavar=kind.__name__.upper(), help=text)
    return parser


def parse_config(argv: list[str] | None = None, description: str = "", config: type = TrainConfig):
    """Build a ``config`` (TrainConfig by default) from ``--field value`` arguments; bare ``--flag`` sets a bool to true."""
    return config(**vars(build_parser(description, config).parse_args(argv)))
