"""Models: the registries of classifiers (``registry``) and segmenters (``segmenters``), the simple-CNN baselines
(``simple_cnn``), offline ImageNet weights (``imagenet``), the multi-task model (``multitask``), the checkpoint layout
(``checkpoint``) and the catalog: the one listing of checkpoint folders, and where each model's weights are (``catalog``)."""
