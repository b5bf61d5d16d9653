"""ZeroGPU on a CPU: the real ``spaces`` package with SPACES_ZERO_GPU set, only its device API and GPU moves stood in.

    python tests/zerogpu_stand_in.py IMAGE     # prints one JSON object (tests/test_zerogpu.py reads it)

``spaces.GPU`` then does what it does on a Space: each call is scheduled (here: recorded, with its duration), runs in
a worker process forked from this one, and its arguments and result cross pickled; an exception inside comes back as
a bare "ZeroGPU worker error". What stays out is what needs the Hub's device API or a GPU: scheduling itself, and the
moving of tensors to the lent GPU (``spaces.zero.torch.init`` / ``move``), which the GPU lease's check covers.
Run as a script (a fresh process): ``spaces`` patches torch as it loads, which must not leak into the test process.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.update(SPACES_ZERO_GPU="true", SPACES_ZERO_DEVICE_API_URL="http://127.0.0.1:9", BRAIN_MRI_DEVICE="cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import spaces  # noqa: E402,F401  (first, as in app.py)
from spaces.zero import client, wrappers  # noqa: E402
from spaces.zero import torch as zero_torch  # noqa: E402
from spaces.zero.api import ScheduleResponse  # noqa: E402

SCHEDULED: list[float | None] = []  # seconds asked for, one per scheduled call
WORKER_PIDS = Path(tempfile.mkdtemp()) / "pids"  # written by the forked workers


def _schedule(task_id, request=None, duration=None, gpu_size=None, **kwargs) -> ScheduleResponse:
    SCHEDULED.append(None if duration is None else duration.total_seconds())
    return ScheduleResponse(idle=True, nvidiaIndex=0, nvidiaUUID="stand-in", allowToken="stand-in")


def _allow(allow_token: str) -> None:  # runs in the worker as it starts
    with WORKER_PIDS.open("a") as f:
        f.write(f"{os.getpid()}\n")


client.schedule, client.release, client.allow = _schedule, lambda *a, **k: None, _allow
zero_torch.init = zero_torch.move = lambda *a, **k: None  # no GPU to initialise or move the models to

import numpy as np  # noqa: E402
import torch  # noqa: E402

from brainmri.data.imageio import load_image  # noqa: E402
from brainmri.serving import Predictor, zerogpu  # noqa: E402


def error_of(call) -> str:
    try:
        call()
    except Exception as e:  # the scenario reports what the visitor would read
        return f"{type(e).__name__}: {e}"
    return ""


def main(image_path: str) -> dict:
    image = load_image(image_path)
    predictor = Predictor(max_batch=1)
    report = {"decorated": predictor.run_passes_on_gpu != predictor.run_passes}
    through = predictor.predict(image, "simple_cnn_7")  # scheduled, forked, pickled there and back
    plain = predictor.run_passes([image], "simple_cnn_7", "LayerCAM")[0]  # in this process
    report["same_answer"] = through.probabilities == plain.probabilities and bool(np.array_equal(through.cam, plain.cam))
    report["top_class"], report["tumour_box"] = through.top_class, through.details()["tumour_box"]
    report["scheduled_after_good"] = list(SCHEDULED)
    report["bad_method"] = error_of(lambda: predictor.predict(image, "simple_cnn_7", "NoSuchCAM"))
    report["bad_model"] = error_of(lambda: predictor.predict(image, "resnet999"))
    report["scheduled_after_bad"] = list(SCHEDULED)
    # Unchecked, the same mistake inside the decorated call: what the visitor would read, and the quota spent.
    report["inside"] = error_of(lambda: predictor.run_passes_on_gpu([image], "simple_cnn_7", "NoSuchCAM"))
    on_gpu = zerogpu.gpu_task(lambda: {"logits": torch.zeros(2, device="meta")}, duration=5)  # meta: the CPU's stand-in for CUDA
    report["device_tensor"] = error_of(on_gpu)
    report["scheduled_at_end"] = list(SCHEDULED)
    report["parent_pid"], report["worker_pids"] = os.getpid(), [int(p) for p in WORKER_PIDS.read_text().split()]
    report["forked_in_parent"] = wrappers.forked
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
