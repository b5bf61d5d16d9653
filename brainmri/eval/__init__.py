"""Evaluation: metrics (``metrics``), ensembles (``ensemble``), figures and model cards (``report``), the
seed-spread tables (``seeds``), the tumour outline's figures (``segmentation``) and metrics.json with the results
tables' rules (``tables``)."""
