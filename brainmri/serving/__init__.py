"""Serving: one image (or a batch) through the models, with a heatmap and an OOD verdict, on the serving device.

One job per module, in the order a request meets them (timm's ``_builder`` / ``_hub`` / ``_factory`` split):

- ``zerogpu``: ``@spaces.GPU`` on the GPU entry point, a no-op off ZeroGPU (imported first: before CUDA starts);
- ``device``: which device (``BRAIN_MRI_DEVICE``), and models and batches moved to it;
- ``loading``: a checkpoint folder -> ``LoadedModel`` (the builder);
- ``rewrites``: a loaded model made cheaper to run, the same function (batch norm folded, "SAME" padding in the kernel);
- ``cache``: ``ModelCache``, loaded models bounded in bytes;
- ``classify``: the classifier's batched forward + backward (probabilities, heatmap);
- ``judge``: the OOD judge's batched forward;
- ``result``: ``Prediction``, what a request gets back;
- ``served``: ``ServedModels``, which models this deployment serves (sources, ensembles, default, OOD judge,
  segmenter), each loaded on demand;
- ``predictor``: ``Predictor``, the front door, one of those: batching, and ``run_passes``, the GPU entry point.

A second model in the same request (the tumour outline) is one more module here (``segment``: its loader and its
batched pass), its own ``ModelCache(..., loader=...)`` in ``Predictor``, a field of ``Prediction``, and one more
step in ``Predictor.run_passes``, so it shares the request's device and, on ZeroGPU, its GPU lease.
"""

from brainmri.serving import zerogpu  # noqa: F401  (first: spaces must be imported before torch initialises CUDA)
from brainmri.serving.cache import ModelCache
from brainmri.serving.classify import run_model_batch
from brainmri.serving.device import resolve_device
from brainmri.serving.judge import ood_check_batch
from brainmri.serving.loading import LoadedModel, load_model
from brainmri.serving.predictor import Predictor
from brainmri.serving.result import Prediction

__all__ = [
    "LoadedModel",
    "ModelCache",
    "Prediction",
    "Predictor",
    "load_model",
    "ood_check_batch",
    "resolve_device",
    "run_model_batch",
]
