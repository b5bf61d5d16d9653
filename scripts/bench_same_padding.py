"""TensorFlow's "SAME" padding in the kernel against timm's padded copy: what a served model's heatmap pass costs.

    HF_HUB_OFFLINE=1 python scripts/bench_same_padding.py                     # the default model, batches of 1 and 8
    HF_HUB_OFFLINE=1 python scripts/bench_same_padding.py --model tf_efficientnet_lite2 --batches 1 4 --repeats 8

The model loads as the app serves it (``load_model``: batch norm folded, ``same_padding_in_kernel``), then a second
copy gets timm's ``Conv2dSame`` back over the same weights. Both run the default heatmap pass (``run_model_batch``:
the class, its probabilities and LayerCAM; the input-size forward that gives the class runs through the served
copy's twin in both, so the difference is the heatmap pass's) on the same Testing slices with one torch thread, as a
batch worker does, taking turns so that the machine's drift weighs on both alike. Prints the median CPU ms an image of each and
the largest difference of their probabilities. Asserts nothing (tests/test_serving_speed.py checks the numbers).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from timm.layers import Conv2dSame

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brainmri.cli import add_data_argument, exit_code, setup_logging  # noqa: E402
from brainmri.data.imageio import load_image  # noqa: E402
from brainmri.data.records import load_records  # noqa: E402
from brainmri.models.catalog import discover  # noqa: E402
from brainmri.models.registry import DEFAULT_CLASSIFIER, cam_layer, get_spec  # noqa: E402
from brainmri.runtime import configure_torch_threads  # noqa: E402
from brainmri.serving.classify import run_model_batch  # noqa: E402
from brainmri.serving.loading import LoadedModel, load_model  # noqa: E402
from brainmri.serving.rewrites import Conv2dSameInKernel  # noqa: E402


def with_padded_copies(loaded: LoadedModel) -> LoadedModel:
    """The same served model with timm's ``Conv2dSame`` (a padded copy of the input) back in place of the kernel's."""
    model = copy.deepcopy(loaded.model)
    for parent in list(model.modules()):
        for name, conv in list(parent.named_children()):
            if type(conv) is Conv2dSameInKernel:
                old = Conv2dSame(
                    conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, groups=conv.groups, bias=conv.bias is not None
                )
                old.weight, old.bias = conv.weight, conv.bias
                setattr(parent, name, old)
    name = loaded.name
    return dataclasses.replace(loaded, model=model, layer=cam_layer(model, name), stages=get_spec(name).cam_stages(model))


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a shipped model (default: the app's default)")
    add_data_argument(parser)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes to time")
    parser.add_argument("--repeats", type=int, default=6, help="turns of each at each batch size (the first is a warm-up)")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be at least 2: the first turn is a warm-up, not timed")

    def run() -> None:
        configure_torch_threads(2)  # the app's: one thread a batch worker on 2 cores
        sources = discover(hub=False)
        name = args.model or DEFAULT_CLASSIFIER  # the default's classifier (the default itself may be an ensemble)
        new = load_model(name, sources[name].location)
        old = with_padded_copies(new)
        files = load_records(args.data, "test").sources[::50][: max(args.batches)]
        images = [load_image(f) for f in files]
        print(f"{name}, torch threads {torch.get_num_threads()}, {len(images)} Testing slices")
        for batch in args.batches:
            times: dict[str, list[float]] = {"timm's padded copy": [], "in the kernel": []}
            for _ in range(args.repeats):
                for label, loaded in zip(times, (old, new)):
                    start = time.process_time()
                    run_model_batch(loaded, images[:batch], "LayerCAM")
                    times[label].append(1000 * (time.process_time() - start) / batch)
            a, b = run_model_batch(old, images[:batch], "LayerCAM"), run_model_batch(new, images[:batch], "LayerCAM")
            diff = max(abs(x.probabilities[c] - y.probabilities[c]) for x, y in zip(a, b) for c in x.probabilities)
            medians = {label: statistics.median(t[1:]) for label, t in times.items()}
            print(
                f"batch {batch}: class + heatmap, CPU ms an image: "
                + ", ".join(f"{label} {ms:.1f}" for label, ms in medians.items())
                + f"; largest probability difference {diff:.1e}"
            )

    return exit_code(run, logging.getLogger(__name__))


if __name__ == "__main__":
    sys.exit(main())
