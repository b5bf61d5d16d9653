"""Evaluation: metrics (``metrics``), ensembles (``ensemble``), figures and model cards (``report``) and the
seed-spread tables (``seeds``)."""
