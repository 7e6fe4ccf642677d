"""The only module that imports mlflow: register versions, move aliases, load, lineage.

A registered version is an MLflow pyfunc model whose ``model`` artifact is a folder written by
:func:`nicheloop.model.save_model` (weights, class names, data config, and the compiled graph of a
compressed version) plus the drift reference
of its validation set (:class:`~nicheloop.reference.Reference`, ``reference.npz``). Lineage lives
in the version's tags.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient

from nicheloop.errors import NotFound, NotReady
from nicheloop.model import META_FILE, NicheModel, load_model, save_model
from nicheloop.reference import Reference

log = logging.getLogger(__name__)

EXPERIMENT = "nicheloop"
# the run artifact listing the labels a version trained and was held out on (lineage; the
# retraining policy counts the labels that are new since)
MANIFEST = "snapshot_manifest.json"
# the tag of a label-free stopgap (training.adapt): the version whose batch-norm statistics it moved
STOPGAP_OF = "stopgap_of"
# a version's tag: when the new world it was trained for began (seconds since the epoch; an input
# alarm's raising window, carried on to the versions trained from it)
WORLD_SINCE = "world_since"


class _NichePyfunc(PythonModel):
    """Lets ``mlflow.pyfunc.load_model`` serve a nicheloop version (input: a float array N×3×H×W)."""

    def load_context(self, context: Any) -> None:
        self.model = load_model(Path(context.artifacts["model"]))

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # mlflow reads hints
        import torch

        return self.model.infer(torch.as_tensor(np.asarray(model_input, dtype=np.float32))).probs


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    run_id: str
    tags: dict[str, str]
    aliases: list[str]
    created_at: float | None = None  # when it was registered (seconds since the epoch)


def world_since(champion: VersionInfo, version: Callable[[str], VersionInfo]) -> float | None:
    """When the new world ``champion`` was trained for began (a stopgap's: that of the version it
    patches, read by ``version``); None: the world its line began in."""
    patched = champion.tags.get(STOPGAP_OF)
    since = (version(patched).tags if patched else champion.tags).get(WORLD_SINCE)
    return float(since) if since else None


@dataclass
class LoadedVersion:
    info: VersionInfo
    model: NicheModel
    reference: Reference  # what the validation set looked like to this version


def manifest_images(text: str) -> frozenset[str]:
    """Every image a :data:`MANIFEST` names: trained, held out, or left out by a gate.

    Raises:
        ValueError: ``text`` is not a manifest (not JSON, or its lists are not of rows).
    """
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("a snapshot manifest is a JSON object")
    return frozenset(
        str(row[0]) for part in ("train", "holdout", "held_back", "doubted") for row in data.get(part, ())
    )


def _info(name: str, mv: Any) -> VersionInfo:
    """A :class:`VersionInfo` of an MLflow ``ModelVersion``."""
    created = mv.creation_timestamp / 1000.0 if mv.creation_timestamp else None
    return VersionInfo(name, str(mv.version), mv.run_id or "", dict(mv.tags), list(mv.aliases), created)


class Registry:
    """MLflow tracking + model registry for one registered model name."""

    def __init__(self, tracking_uri: str, model_name: str) -> None:
        self.tracking_uri, self.name = tracking_uri, model_name
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def register(
        self,
        model: NicheModel,
        reference: Reference,
        *,
        params: dict[str, Any],
        metrics: dict[str, float],
        lineage: dict[str, str],
        alias: str,
        artifacts: dict[str, str] | None = None,
    ) -> VersionInfo:
        """Log a run with ``model`` and register it as a new version carrying ``alias``.

        ``lineage`` (dataset snapshot hash, parent version, config hash…) becomes version tags.
        """
        mlflow.set_experiment(EXPERIMENT)
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=f"{self.name}-{alias}") as run:
            model_dir = save_model(model, Path(tmp) / "model")
            reference.save(model_dir)
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.log_metrics(metrics)
            mlflow.set_tags(lineage)
            for name, text in (artifacts or {}).items():
                mlflow.log_text(text, name)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=_NichePyfunc(),
                artifacts={"model": str(model_dir)},
                pip_requirements=["torch", "timm", "numpy", *(["onnxruntime"] if model.runtime else [])],
                registered_model_name=self.name,
            )
        version = str(info.registered_model_version)
        for key, value in {**lineage, "run_id": run.info.run_id}.items():
            self.client.set_model_version_tag(self.name, version, key, str(value))
        self.set_alias(alias, version)
        log.info("registered %s version %s as %s", self.name, version, alias)
        return self.version(version)

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)

    def version(self, version: str) -> VersionInfo:
        """Raises NotFound for an unknown version."""
        try:
            mv = self.client.get_model_version(self.name, version)
        except MlflowException as exc:
            raise NotFound(f"{self.name} has no version {version}: {exc.message}") from exc
        return _info(self.name, mv)

    def resolve(self, alias: str) -> VersionInfo:
        """The version ``alias`` points at.

        Raises:
            NotReady: if no version carries the alias (run `nicheloop bootstrap` first).
        """
        try:
            mv = self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException as exc:
            raise NotReady(
                f"no version of {self.name} has alias {alias!r}; run `nicheloop bootstrap`"
            ) from exc
        return _info(self.name, mv)

    def load(self, version: str, device: str = "cpu") -> LoadedVersion:
        """Download and rebuild a version (model + drift reference)."""
        info = self.version(version)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{self.name}/{version}",
                    dst_path=tmp,
                    tracking_uri=self.tracking_uri,
                )
            )
            model_dir = next(p.parent for p in root.rglob(META_FILE))
            model = load_model(model_dir, device=device)
            reference = Reference.load(model_dir)
        return LoadedVersion(info=info, model=model, reference=reference)

    def artifact_text(self, run_id: str, name: str) -> str | None:
        """A text artifact of a run (e.g. ``snapshot_manifest.json``); None if the run has none by
        that name."""
        try:
            return mlflow.artifacts.load_text(f"runs:/{run_id}/{name}")
        except (MlflowException, OSError):
            return None

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    def newest_at(self) -> float | None:
        """When the newest trained version was registered (seconds since the epoch; None: there is
        none); a stopgap is no training run, so it starts no cooldown."""
        found = self.client.search_model_versions(f"name='{self.name}'")
        return max(
            (
                mv.creation_timestamp / 1000.0
                for mv in found
                if mv.creation_timestamp and STOPGAP_OF not in (mv.tags or {})
            ),
            default=None,
        )

    def stopgap_of(self, version: str) -> VersionInfo | None:
        """The stopgap made for ``version``, if one was (one is made per champion)."""
        found = self.client.search_model_versions(f"name='{self.name}'")
        made = [mv for mv in found if (mv.tags or {}).get(STOPGAP_OF) == version]
        return self.version(str(made[0].version)) if made else None  # the search has no aliases

    def versions(self) -> list[VersionInfo]:
        found = self.client.search_model_versions(f"name='{self.name}'")
        return sorted((self.version(str(mv.version)) for mv in found), key=lambda v: int(v.version))
