"""Models: the registry (``registry``), the simple-CNN baselines (``simple_cnn``), offline ImageNet weights
(``imagenet``), the checkpoint layout (``checkpoint``) and the catalog of folders to serve (``catalog``)."""
