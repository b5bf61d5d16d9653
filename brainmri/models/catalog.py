"""Which registry models have trained weights the app can serve, and where they are; the one listing of checkpoint folders.

A model (a classifier, or the tumour segmenter) is available from its local checkpoint folder
(``spec.local_dir``), else from its Hub repo (``spec.hub_repo_id``): checked with a short timeout, or only in
the local Hub cache when ``HF_HUB_OFFLINE=1``. Every other model is listed with the
reason it is not available, so that the app shows it rather than failing on it.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from brainmri.eval.tables import metrics_if_any
from brainmri.models.checkpoint import (
    CALIBRATION,
    CONFIG,
    MANIFEST,
    METRICS,
    OOD_CONFIG,
    OOD_TENSORS,
    OUTLINE_RULE,
    TRAIN_CONFIG,
    UNSEEN,
    WEIGHTS,
    is_multitask,
    is_segmenter,
    results_dir,
)
from brainmri.models.registry import APP_DEFAULT, DEFAULT_CLASSIFIER, ENSEMBLES, REGISTRY, ModelSpec, get_spec
from brainmri.models.segmenters import SEGMENTER_DEFAULT, SegmenterSpec, get_segmenter_spec
from brainmri.settings import checkpoint_dir, default_model, hub_offline

_logger = logging.getLogger(__name__)

HUB_TIMEOUT_S = 3.0  # per repo; all repos are asked at once
ENSEMBLE = "ensemble"  # a ModelSource's ``where`` for an ensemble (registry ENSEMBLES): its members' weights are theirs
# Files the app needs from a checkpoint; manifest.json lets load_checkpoint verify them (train_config.json: the
# segmenter's input size).
CHECKPOINT_FILES = [CONFIG, WEIGHTS, MANIFEST, METRICS, CALIBRATION, OOD_CONFIG, OOD_TENSORS, OUTLINE_RULE, TRAIN_CONFIG]


def checkpoint_folders(
    root: str | Path | None = None, *, holding: str = CONFIG, classifiers: bool = False, registry_order: bool = False
) -> list[Path]:
    """The checkpoint folders under ``root`` (default: ``brainmri.settings.checkpoint_dir()``), sorted by name;
    empty when ``root`` is no folder. Every listing of checkpoint folders is this one.

    Args:
        holding: the file a folder must hold: ``CONFIG`` (any checkpoint), ``METRICS`` (what tables and pictures list).
        classifiers: leave out the segmentation models' folders (a multi-task model, which classifies too, stays).
        registry_order: the registry's models first, in registry order, then the rest by name.
    """
    root = Path(checkpoint_dir() if root is None else root)
    if not root.is_dir():
        return []
    folders = sorted(p for p in root.iterdir() if (p / holding).is_file() and not (classifiers and is_segmenter(p) and not is_multitask(p)))
    if registry_order:
        order = {name: i for i, name in enumerate(REGISTRY)}
        folders.sort(key=lambda p: (order.get(p.name, len(order)), p.name))
    return folders


@dataclass(frozen=True)
class ModelSource:
    """Where one registry model's weights are, or why there are none.

    Args:
        name: registry name.
        where: "local", "hub" or "" when unavailable.
        location: the checkpoint folder, or the Hub repo id.
        reason: why it is unavailable; empty when available.
    """

    name: str
    where: str
    location: str
    reason: str = ""

    @property
    def available(self) -> bool:
        return bool(self.where)


def _local(spec: ModelSpec | SegmenterSpec) -> ModelSource | None:
    name, folder = spec.name, spec.local_dir
    if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file():
        return ModelSource(name, "local", str(folder))
    return None


def _hub(spec: ModelSpec | SegmenterSpec, timeout: float) -> ModelSource:
    """Available on the Hub (or, offline, in the Hub cache), else the reason why not."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    name, repo = spec.name, spec.hub_repo_id
    if hub_offline():
        cached = try_to_load_from_cache(repo, WEIGHTS)
        # With its manifest, or it is not the whole checkpoint: timm's own hf-hub: load caches only config and weights,
        # and a folder without a manifest is served unverified, uncalibrated and unjudged.
        if isinstance(cached, str) and all((Path(cached).parent / f).is_file() for f in (CONFIG, MANIFEST)):
            return ModelSource(name, "hub", repo)
        return ModelSource(name, "", repo, f"no local checkpoint; offline (HF_HUB_OFFLINE=1) and {repo} is not in the Hub cache")
    try:
        files = {s.rfilename for s in HfApi().model_info(repo, timeout=timeout).siblings or []}
    except Exception as e:  # noqa: BLE001  (any failure only makes this model unavailable, with the reason shown)
        reason = type(e).__name__ if "RepositoryNotFound" in type(e).__name__ else f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        return ModelSource(name, "", repo, f"no local checkpoint; Hub repo {repo} not reachable ({reason})")
    missing = {CONFIG, WEIGHTS, MANIFEST} - files
    if missing:
        return ModelSource(name, "", repo, f"no local checkpoint; Hub repo {repo} lacks {', '.join(sorted(missing))}")
    return ModelSource(name, "hub", repo)


def discover(hub: bool = True, timeout: float = HUB_TIMEOUT_S) -> dict[str, ModelSource]:
    """Every registry model, in registry order, with where its weights are or why there are none; then every
    ensemble (registry ``ENSEMBLES``), available when all its members are.

    Args:
        hub: also look on the Hub for models without a local folder.
        timeout: seconds per Hub request (they run in parallel).
    """
    with ThreadPoolExecutor(max_workers=8) as pool:  # the Hub's requests side by side
        found = dict(zip(REGISTRY, pool.map(lambda spec: _find(spec, hub, timeout), REGISTRY.values())))
    return {**found, **ensemble_sources(found)}


def _find(spec: ModelSpec | SegmenterSpec, hub: bool, timeout: float) -> ModelSource:
    """Where a model's weights are: its local folder, else (with ``hub``) its Hub repo; else why there are none."""
    found = _local(spec)
    if found is not None:
        return found
    if hub:
        return _hub(spec, timeout)
    return ModelSource(spec.name, "", str(spec.local_dir), "no local checkpoint (Hub lookup disabled)")


def ensemble_sources(sources: dict[str, ModelSource], segmenter: str | None = SEGMENTER_DEFAULT) -> dict[str, ModelSource]:
    """Every registry ensemble: available when its members are available in ``sources`` and its outliner is the
    deployment's ``segmenter`` (whose forward gives the second opinion), else unavailable with why."""
    found = {}
    for name, spec in ENSEMBLES.items():
        lacking = [m for m in spec.members if m not in sources or not sources[m].available]
        why = f"needs {' and '.join(lacking)}, not available" if lacking else ""
        if not why and spec.outliner != segmenter:
            outlining = f"outlines with {segmenter}" if segmenter else "has no segmenter"
            why = f"its second opinion is {spec.outliner}'s forward, but this deployment {outlining}"
        found[name] = ModelSource(name, "" if why else ENSEMBLE, "+".join(spec.members), why)
    return found


def ensemble_figures(name: str, results: str | Path | None = None) -> Path:
    """Where an ensemble's scores live (metrics.json's layout, written by scripts/ensemble_default.py), in
    ``results`` (default: the project's results/): it has no checkpoint folder of its own."""
    return Path(results or results_dir()) / f"{name}.json"


def read_ensemble_figures(name: str, results: str | Path | None = None) -> dict | None:
    """An ensemble's scores (:func:`ensemble_figures`), or None when it has not been scored."""
    path = ensemble_figures(name, results)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        _logger.warning("%s: %s unreadable, so shown as not scored (%s)", name, path, e)
        return None


def discover_segmenter(name: str = SEGMENTER_DEFAULT, hub: bool = True, timeout: float = HUB_TIMEOUT_S) -> ModelSource:
    """Where the tumour segmenter ``name`` (registry ``SEGMENTERS``) has its weights, or why it has none, as
    :func:`discover` finds a classifier's: its local folder, else its Hub repo.

    Args:
        hub: also look on the Hub when there is no local folder.
        timeout: seconds for the Hub request.
    """
    return _find(get_segmenter_spec(name), hub, timeout)


def checkpoint_folder(source: ModelSource) -> Path:
    """The local folder of an available model, downloading its checkpoint files from the Hub if needed."""
    if not source.available:
        raise ValueError(f"model {source.name} is not available: {source.reason}")
    if source.where == "local":
        return Path(source.location)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source.location, allow_patterns=CHECKPOINT_FILES, local_files_only=hub_offline()))
    except Exception as e:  # noqa: BLE001  (network and Hub errors of many kinds; the caller shows the message)
        raise ValueError(f"cannot fetch {source.location} from the Hub: {type(e).__name__}: {e}") from e


def validation_accuracy(folder: str | Path) -> float:
    """The checkpoint's best validation accuracy from metrics.json, or -1 when unknown."""
    try:
        return float((metrics_if_any(folder) or {})["validation"]["accuracy"])
    except (KeyError, TypeError, ValueError):  # ValueError: a figure that is not a number
        return -1.0


def app_default_model(sources: dict[str, ModelSource]) -> str | None:
    """The model the app selects first: ``BRAIN_MRI_DEFAULT_MODEL``, else the registry's ``APP_DEFAULT`` when
    available, else its ``DEFAULT_CLASSIFIER`` (the ensemble's explainer, alone), else the available local model with
    the best validation accuracy.

    Chosen on leak-free validation (each checkpoint's ``val_split.txt``: no image with a twin, mirrored or not,
    in its train part), never on Testing: the test set is for reporting only.
    """
    override = default_model()
    if override:
        if override not in sources or not sources[override].available:
            raise ValueError(f"BRAIN_MRI_DEFAULT_MODEL={override} is not an available model")
        return override
    return rule_default_model(sources)


def rule_default_model(sources: dict[str, ModelSource]) -> str | None:
    """The registry's choice of :func:`app_default_model`, without ``BRAIN_MRI_DEFAULT_MODEL``."""
    available = [s for s in sources.values() if s.available]
    if not available:
        return None
    for first in (APP_DEFAULT, DEFAULT_CLASSIFIER):  # an ensemble default that cannot be served: its classifier alone
        if first in sources and sources[first].available:
            return first
    local = [s for s in available if s.where == "local"] or available
    return max(local, key=lambda s: validation_accuracy(s.location) if s.where == "local" else -1.0).name


FAMILY_TITLES = {
    "ensemble": "Ensemble",
    "efficientnet": "EfficientNet",
    "multitask": "Multi-task",
    "simple": "Simple CNN",
    "baseline": "Baseline",
}
FAMILY_ORDER = list(FAMILY_TITLES)  # the dropdown's groups, the shipped default's family first


def unseen_accuracy(source: ModelSource) -> float | None:
    """Accuracy on the unseen Testing images (no twin in Training, mirrored or not) from a local checkpoint's
    metrics.json, or an ensemble's figures; None when unknown."""
    if source.where == ENSEMBLE:
        metrics = read_ensemble_figures(source.name)
    elif source.where == "local":
        metrics = metrics_if_any(source.location)
    else:
        return None
    try:
        return float(metrics[UNSEEN]["accuracy"])
    except (KeyError, TypeError):
        return None


def _family_and_about(name: str) -> tuple[str, str]:
    if name in ENSEMBLES:
        return "ensemble", ENSEMBLES[name].about
    spec = get_spec(name)
    return spec.family, spec.about or spec.name


def model_about(name: str) -> str:
    """What a model is, in the words of its list label ("Lite0, ImageNet-initialised"): beside its registry name where
    the app shows that name, so the two can be matched."""
    family, about = _family_and_about(name)
    return f"{FAMILY_TITLES.get(family, family)} · {about}"


def model_label(source: ModelSource) -> str:
    """What a dropdown shows for a model: its family, what it is, and in brackets its accuracy on unseen Testing
    images (:data:`LABEL_SCORE` says so beside the list). Short enough for a phone's dropdown."""
    acc = unseen_accuracy(source)
    return f"{model_about(source.name)} ({f'{100 * acc:.1f}%' if acc is not None else 'not measured'})"


UNSEEN_WORDS = "unseen Testing slices (no exact, near or mirrored twin in Training)"
LABEL_SCORE = f"In brackets: accuracy on {UNSEEN_WORDS}"  # what model_label's figure is


def label_score(sources: dict[str, ModelSource]) -> str:
    """:data:`LABEL_SCORE` with how many slices the figure is over and how many of them are glioma, read from the
    default classifier's metrics.json: a figure over a set that is mostly one class says so."""
    source = sources.get(DEFAULT_CLASSIFIER)
    metrics = metrics_if_any(source.location) if source is not None and source.where == "local" else None
    try:
        unseen = metrics[UNSEEN]
        n, glioma = int(unseen["n"]), int(unseen["per_class"]["glioma"]["n"])
    except (KeyError, TypeError, ValueError):
        return LABEL_SCORE
    if n <= 0:  # measured over no slice
        return LABEL_SCORE
    return f"In brackets: accuracy on {n} {UNSEEN_WORDS}, {glioma / n:.0%} of them glioma"


def labelled_choices(sources: dict[str, ModelSource], ensembles: bool = True) -> list[tuple[str, str]]:
    """(label, registry name) of the available models, grouped by family, registry order within a family; without
    the ensembles when ``ensembles`` is False (Compare lists their members, each once)."""
    order = {family: i for i, family in enumerate(FAMILY_ORDER)}
    available = [s for s in sources.values() if s.available and (ensembles or s.where != ENSEMBLE)]
    available.sort(key=lambda s: order.get(_family_and_about(s.name)[0], len(order)))  # stable: registry order kept within
    return [(model_label(s), s.name) for s in available]


def unavailable_markdown(missing: dict[str, str]) -> str:
    """A folded Markdown list of the registry models that cannot be served, each with its reason."""
    if not missing:
        return ""
    lines = "\n".join(f"- `{name}`: {reason}" for name, reason in missing.items())
    summary = f"{len(missing)} more models in the registry have no weights on this server (why, for developers)"
    return f"<details><summary>{summary}</summary>\n\n{lines}\n</details>"
