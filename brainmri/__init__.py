"""brain-mri: classify brain MRI slices with timm CNNs and explain them with Grad-CAM.

Importing the package registers the simple-CNN baselines with timm, so that
``timm.create_model("local-dir:checkpoints/simple_cnn_7", pretrained=True)`` works too.
"""

from brainmri.models import simple_cnn  # noqa: F401  (registers simple_cnn_* with timm)

__version__ = "0.1.0"
