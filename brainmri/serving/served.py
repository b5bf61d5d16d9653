"""The models this deployment serves: where each one's weights are, the ensembles its members and segmenter rule in,
the default, the OOD judge, the segmenter; each loaded on demand into a model cache (brainmri.serving.cache).

A request's way through them is :class:`brainmri.serving.predictor.Predictor`'s, which is one of these.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from brainmri.models.catalog import (
    ENSEMBLE,
    ModelSource,
    app_default_model,
    checkpoint_folder,
    discover,
    discover_segmenter,
    ensemble_sources,
    model_about,
    model_label,
    rule_default_model,
)
from brainmri.models.checkpoint import OOD_CONFIG
from brainmri.models.registry import ENSEMBLES, EnsembleSpec
from brainmri.models.segmenters import SEGMENTER_DEFAULT
from brainmri.serving.cache import ModelCache
from brainmri.serving.loading import LoadedModel
from brainmri.serving.segment import LoadedSegmenter, load_for_serving
from brainmri.settings import default_model, hub_offline, model_cache_mb

_logger = logging.getLogger(__name__)


class ServedModels:
    """The models this deployment can serve, loaded on demand (the arguments as :class:`~brainmri.serving.Predictor`
    documents them)."""

    def __init__(
        self,
        sources: dict[str, ModelSource] | None = None,
        cache_mb: float | None = None,
        ood_model: str | None = "default",
        device: torch.device | str | None = None,
        segmenter: str | ModelSource | None = SEGMENTER_DEFAULT,
    ):
        self.sources = discover() if sources is None else dict(sources)
        self.default_model: str | None = None  # chosen once the segmenter is known: an ensemble needs it
        # "default": the judge is chosen by rule, and again while there is none (Hub models arrive after start-up)
        self.judge_by_rule = ood_model == "default"
        self.ood_model: str | None = None if self.judge_by_rule else ood_model
        self.segmenter: str | None = None  # the segmenter's name while it can outline, else None
        self.segmenter_source: ModelSource | None = None
        self.use_segmenter(discover_segmenter(segmenter) if isinstance(segmenter, str) else segmenter)  # rules both
        self.cache = ModelCache((model_cache_mb() if cache_mb is None else cache_mb) * 2**20, device)
        self.segmenters = ModelCache(float("inf"), device, loader=load_for_serving)  # one small model: never evicted

    def ood_judge(self) -> str | None:
        """The default model when it ships OOD statistics, else the first local model that does (only the
        judges, Lite0 and the one encoder, ship them, so choosing a simple CNN as the default must not switch the check off)."""
        return next(iter(self.ood_judges()), self.default_classifier())

    def default_classifier(self) -> str | None:
        """The default model, or for an ensemble its classifier (whose statistics are the ensemble's)."""
        spec = self.ensemble(self.default_model)
        return spec.explainer if spec else self.default_model

    def ood_judges(self) -> list[str]:
        """Every local model that ships OOD statistics, the default's classifier first: who may judge uploads."""
        first = self.default_classifier()
        local = dict.fromkeys(n for n in [first, *self.available] if n and self.sources[n].where == "local")
        return [n for n in local if (Path(self.sources[n].location) / OOD_CONFIG).is_file()]

    @property
    def available(self) -> list[str]:
        return [name for name, src in self.sources.items() if src.available]

    @property
    def single_models(self) -> list[str]:
        """The available models that are not ensembles: what Compare and the per-model reports run (an ensemble's
        members are among them)."""
        return [name for name in self.available if not self.ensemble(name)]

    @property
    def unavailable(self) -> dict[str, str]:
        return {name: src.reason for name, src in self.sources.items() if not src.available}

    def ensemble(self, name: str | None) -> EnsembleSpec | None:
        """The ensemble ``name`` is (registry ``ENSEMBLES``), or None for a single model."""
        return ENSEMBLES.get(name) if name and name in self.sources and self.sources[name].where == ENSEMBLE else None

    def resolve(self, name: str | None) -> str | None:
        """A model's registry name from what a caller typed: the name itself, or the label the app's list shows for it
        (``catalog.model_label``, with or without its bracketed accuracy), so an API caller may copy either from the
        page. Anything else is returned as it came, to fail with the list of names."""
        if not name or name in self.sources:
            return name or None
        typed = name.strip()
        for registered, source in self.sources.items():
            if source.available and typed in (model_about(registered), model_label(source)):
                return registered
        return typed

    def model(self, name: str | None = None, copy: int = 0) -> LoadedModel:
        """A loaded model (``copy``: which of a batch worker's copies); for an ensemble, the classifier whose heatmap
        explains its answer. ValueError naming the problem if it is unknown or unavailable."""
        name = name or self.default_model
        if name is None:
            raise ValueError("no trained model is available: add a checkpoint folder under checkpoints/")
        if name not in self.sources:
            raise ValueError(f"unknown model {name!r}; available: {', '.join(self.available)}")
        source = self.sources[name]
        if not source.available:
            raise ValueError(f"model {name} is not available: {source.reason}")
        if self.ensemble(name):
            return self.model(self.ensemble(name).explainer, copy)
        return self.cache.get(name, lambda: checkpoint_folder(source), copy)

    def use_segmenter(self, source: ModelSource | None) -> None:
        """Outline with the segmenter at ``source`` (None: no outline); one that is unavailable outlines nothing.
        An ensemble whose second opinion comes from another segmenter's forward is then unavailable, with why."""
        self.segmenter_source = source
        self.segmenter = source.name if source is not None and source.available else None
        if source is not None and not source.available:
            _logger.info("no tumour outline: segmenter %s is not available: %s", source.name, source.reason)
        self.rule_ensembles()

    def add_sources(self, found: dict[str, ModelSource]) -> None:
        """Take the models ``found`` (say, on the Hub) that are not available here yet; then rule the ensembles again."""
        self.sources.update({n: s for n, s in found.items() if n in self.sources and not self.sources[n].available})
        self.rule_ensembles()

    def rule_ensembles(self) -> None:
        """The ensembles listed in ``sources`` ruled in or out for this deployment's members and segmenter
        (``catalog.ensemble_sources``); then the default again, which that may change."""
        ruled = ensemble_sources(self.sources, self.segmenter)
        self.sources.update({n: src for n, src in ruled.items() if n in self.sources})  # given sources: only those
        try:
            self.default_model = app_default_model(self.sources)
        except ValueError:
            self.default_model = self.default_without_override()
        if self.judge_by_rule and self.ood_model is None:
            self.ood_model = self.ood_judge()

    def default_without_override(self) -> str | None:
        """The default when ``BRAIN_MRI_DEFAULT_MODEL`` names a model not available here: an ensemble just ruled out
        gives its classifier alone; a registry model not found yet (its Hub repo is asked when a page first loads),
        or an ensemble whose classifier is not, gives the registry's choice until it arrives (``add_sources`` rules
        again). Offline (``HF_HUB_OFFLINE``), where no lookup will bring it, and for a name the registry does not
        know, the app stops, naming why."""
        override = default_model() or ""
        spec = ENSEMBLES.get(override)
        if spec is not None and self.sources.get(spec.explainer, ModelSource("", "", "")).available:
            _logger.warning("%s is not available (%s): %s answers alone", spec.name, self.sources[spec.name].reason, spec.explainer)
            return spec.explainer
        why = self.sources[override].reason if override in self.sources else "the registry has no such model"
        if override in self.sources and not hub_offline():
            chosen = rule_default_model(self.sources)
            _logger.warning("BRAIN_MRI_DEFAULT_MODEL=%s is not available (%s): %s answers until it is", override, why, chosen)
            return chosen
        # Offline no lookup will bring it: a benchmark of the named model must not quietly measure another.
        raise ValueError(f"BRAIN_MRI_DEFAULT_MODEL={override} is not an available model ({why}); known names: {', '.join(self.sources)}")

    def segmentation_model(self, copy: int = 0) -> LoadedSegmenter | None:
        """The loaded segmenter (that copy of it), or None when this deployment has none."""
        if self.segmenter is None:
            return None
        return self.segmenters.get(self.segmenter, lambda: checkpoint_folder(self.segmenter_source), copy)
