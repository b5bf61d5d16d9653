"""The names serving had before ``brainmri.serving``, for callers written before it: each from its one home there."""

from brainmri.serving import (  # noqa: F401
    CLASS_WORDS,
    NO_TUMOUR,
    LoadedModel,
    ModelCache,
    Prediction,
    Predictor,
    class_words,
    load_model,
    ood_check_batch,
    run_model,
    run_model_batch,
)
