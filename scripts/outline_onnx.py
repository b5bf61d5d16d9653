"""The outline's forward three ways, one torch thread, batch 1: PyTorch float32, PyTorch under bfloat16 autocast (as
served where the CPU computes bf16 natively) and ONNX Runtime float32.

    pip install onnxruntime onnx      # not in requirements.txt: the app does not use them
    HF_HUB_OFFLINE=1 python scripts/outline_onnx.py --models multitask_lite0 unet_lite0

Each model's folder is exported to ONNX (opset 17, a temporary file), batch norm folded as served. Prints the median
ms of each way and the largest difference between ONNX Runtime's mask logits and PyTorch's float32 ones. Asserts
nothing.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brainmri.cli import exit_code  # noqa: E402
from brainmri.segmentation import load_segmenter, mask_logits  # noqa: E402
from brainmri.serving.rewrites import fold_batchnorm  # noqa: E402
from brainmri.settings import checkpoint_dir  # noqa: E402

_logger = logging.getLogger(__name__)


def median_ms(run: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def compare(name: str, repeats: int) -> dict:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError("onnxruntime is not installed: pip install onnxruntime onnx") from None
    model = load_segmenter(checkpoint_dir() / name)
    fold_batchnorm(model)
    model = model.requires_grad_(False).to(memory_format=torch.channels_last)
    side = model.input_size
    x = torch.randn(1, 3, side, side).contiguous(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.contiguous().numpy()}
    with torch.inference_mode():
        fp32 = median_ms(lambda: model(x), repeats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = median_ms(lambda: model(x), repeats)
        reference = mask_logits(model(x)).numpy()
    onnx = median_ms(lambda: session.run(None, feed), repeats)
    diff = float(abs(session.run(None, feed)[0] - reference).max())
    return {"model": name, "torch_fp32_ms": fp32, "torch_bf16_ms": bf16, "onnxruntime_fp32_ms": onnx, "max_abs_diff": diff}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["multitask_lite0", "unet_lite0"], help="segmenters' folders under checkpoints/")
    parser.add_argument("--repeats", type=int, default=30, help="timed forwards a way")
    args = parser.parse_args()

    def run() -> None:
        torch.set_num_threads(1)  # as a batch worker on 2 cores
        for name in args.models:
            r = compare(name, args.repeats)
            print(
                f"{name:16s} torch fp32 {r['torch_fp32_ms']:6.1f} ms, torch bf16 {r['torch_bf16_ms']:6.1f} ms,"
                f" ONNX Runtime fp32 {r['onnxruntime_fp32_ms']:6.1f} ms; max |ORT - torch| mask logit {r['max_abs_diff']:.1e}"
            )

    return exit_code(run, _logger)


if __name__ == "__main__":
    sys.exit(main())
