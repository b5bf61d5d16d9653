"""brain-mri: classify brain MRI slices with timm CNNs and explain them with Grad-CAM.

The public names, as timm's ``create_model`` / ``list_models`` are (each loaded on first use, so that
``import brainmri`` stays light)::

    import brainmri
    model = brainmri.create_model("tf_efficientnet_lite0", num_classes=4)
    predictor = brainmri.Predictor()
    result = predictor.predict(brainmri.load_image("scan.dcm"), "tf_efficientnet_lite0")

Importing the package registers the simple-CNN baselines with timm, so that
``timm.create_model("local-dir:checkpoints/simple_cnn_7", pretrained=True)`` works too.
"""

from __future__ import annotations

import importlib

from brainmri.models import simple_cnn  # noqa: F401  (registers simple_cnn_* with timm)

__version__ = "0.1.0"

# public name -> the module it lives in
_EXPORTS = {
    "REGISTRY": "brainmri.models.registry",
    "create_model": "brainmri.models.registry",
    "get_spec": "brainmri.models.registry",
    "load_checkpoint": "brainmri.models.checkpoint",
    "save_checkpoint": "brainmri.models.checkpoint",
    "data_config": "brainmri.data.preprocess",
    "eval_transform": "brainmri.data.preprocess",
    "load_records": "brainmri.data.records",
    "decode_image": "brainmri.data.imageio",
    "load_image": "brainmri.data.imageio",
    "Predictor": "brainmri.serving.predictor",
    "Prediction": "brainmri.serving.result",
    "load_model": "brainmri.serving.loading",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'brainmri' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
