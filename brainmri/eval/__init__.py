"""Evaluation: metrics (``metrics``), ensembles (``ensemble``), figures and model cards (``report``), the
seed-spread tables (``seeds``) and the tumour outline's figures (``segmentation``)."""
