"""The ``embedding`` monitor: what the network makes of the traffic, in two views.

- **Pre-logits features** (what the model concludes) on the reference's top principal
  components (where the classes differ), tested by default for a mean shift (Hotelling,
  ``mean_shift``), or with Evidently's ``distance``, ``mmd`` or ``model``, or the way the image
  statistics are (``novelty``).
- **Early-stage features** (what the model sees: pooled edge and texture maps, see
  :func:`nicheloop.model.early_modules`), tested for a mean shift on their top components. Fine-tuning
  teaches the pre-logits to ignore blur, noise and lighting (the augmentations ask for it), so a
  changed camera shows in the early view long before it moves the pre-logits (docs/drift.md).

The two views share one ``alpha`` (each decides at ``alpha / 2``, Bonferroni).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
from evidently.legacy.metrics.data_drift.embedding_drift_methods import MMDDriftMethod, ModelDriftMethod

from monitoring.drift import monitor as plugin
from monitoring.drift.twosample import MeanDistance, Novelty, SubspaceShift, bonferroni, ks_columns
from nicheloop.reference import Reference
from nicheloop.settings import EmbeddingMethod

# (drifted, p-value or None, score, details) of one view on one window
Verdict = tuple[bool, float | None, float, dict[str, float]]


@plugin.register_monitor
class EmbeddingDrift:
    """Embedding drift against one reference: its principal components are fitted once.

    ``mean_shift`` (the default) is Hotelling's test of the window's mean on the top ``components``
    (:class:`SubspaceShift`). ``distance`` is Evidently's distance between mean embeddings
    (:class:`MeanDistance`); ``mmd`` and ``model`` are Evidently's other embedding methods, run on
    the projected window and reference; those three decide at their bootstrap's quantile.
    ``novelty`` tests the k-NN novelty of each row in the (robustly scaled) components, each
    component (K-S) and their mean (Hotelling), Bonferroni-combined. ``early``: the reference's
    pooled early-stage features, tested for a mean shift on their top ``early_components``.
    """

    name: ClassVar[str] = "embedding"
    feeds: ClassVar[plugin.Feed] = "inputs"

    def __init__(
        self,
        reference: np.ndarray,
        method: EmbeddingMethod = "mean_shift",
        *,
        early: np.ndarray | None = None,
        components: int = 8,
        early_components: int = 16,
        alpha: float = 0.01,
        min_samples: int = 30,
    ) -> None:
        ref = np.asarray(reference, np.float64)
        self.method, self.alpha, self.min_samples = method, alpha, min_samples
        self.dim = ref.shape[1] if ref.ndim == 2 else 0
        self.ready = ref.ndim == 2 and len(ref) >= plugin.MIN_REFERENCE
        if not self.ready:
            return
        early_ref = np.asarray(early if early is not None else np.zeros((0, 0)), np.float64)
        usable = early_ref.ndim == 2 and early_ref.shape[1] > 0 and len(early_ref) >= plugin.MIN_REFERENCE
        self.early = SubspaceShift(early_ref, early_components) if usable else None
        self.early_dim = early_ref.shape[1] if usable else 0
        self.level = alpha / (2 if self.early is not None else 1)  # each view's share of alpha
        self.subspace = SubspaceShift(ref, components)
        self.reference = self.project(ref)
        self.held_out = np.sort(self.subspace.held, axis=0)
        self.novelty = Novelty(self.features(ref)) if method == "novelty" else None
        self.distance = MeanDistance(self.reference, 1 - self.level) if method == "distance" else None
        self._evidently = {
            "mmd": MMDDriftMethod(bootstrap=True, quantile_probability=1 - self.level),
            "model": ModelDriftMethod(bootstrap=True, quantile_probability=1 - self.level),
        }.get(method)
        if method not in ("mean_shift", "novelty", "distance") and self._evidently is None:
            raise ValueError(f"unknown embedding drift method {method!r}; use one of {EmbeddingMethod}")

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        return self.subspace.project(embeddings)

    def features(self, embeddings: np.ndarray) -> np.ndarray:
        """The components and the distance off their subspace (what the reference never varied in)."""
        centred = np.asarray(embeddings, np.float64) - self.subspace.mean
        proj = centred @ self.subspace.basis
        residual = np.linalg.norm(centred - proj @ self.subspace.basis.T, axis=1, keepdims=True)
        return np.hstack([proj, residual])

    def __call__(self, embeddings: np.ndarray, early: np.ndarray | None = None) -> plugin.MonitorResult:
        """The verdict on one window: ``embeddings`` (n, D) pre-logits, ``early`` (m, E) the early
        features of the rows that carry them (none from older gateways: the pre-logits alone)."""
        cur = np.asarray(embeddings, np.float64)
        if not self.ready or len(cur) < self.min_samples or cur.ndim != 2 or cur.shape[1] != self.dim:
            return plugin.MonitorResult.insufficient("embedding", len(cur))
        drifted, p, score, details = self._pre_logits(cur)
        p_early = self._early(early)
        if p_early is not None:
            details["p_early"] = p_early
            drifted = drifted or p_early < self.level
        if p is not None:
            details["p_pre_logits"] = p
            p = min(1.0, min(p, p_early if p_early is not None else 1.0) * self.alpha / self.level)
        return plugin.MonitorResult("embedding", "ok", len(cur), drifted, p, score, details)

    def _early(self, early: np.ndarray | None) -> float | None:
        """The early view's p-value, or None where the window or the reference lacks it."""
        if self.early is None or early is None:
            return None
        rows = np.asarray(early, np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.early_dim or len(rows) < self.min_samples:
            return None
        return self.early.p_value(rows)

    def _pre_logits(self, cur: np.ndarray) -> Verdict:
        if self.method == "mean_shift":
            p = self.subspace.p_value(cur)
            return p < self.level, p, 1.0 - p, {}
        proj = self.project(cur)
        if self.novelty is not None:
            components = dict(
                zip((f"pc{j}" for j in range(proj.shape[1])), map(float, ks_columns(self.held_out, proj)))
            )
            tests = self.novelty.p_values(self.features(cur)) | {
                "components": bonferroni(components),
                "mean_shift": self.subspace.shift.p_value(proj),
            }
            p = bonferroni(tests)
            return p < self.level, p, 1.0 - p, {f"p_{k}": v for k, v in tests.items()}
        if self.distance is not None:
            distance, drifted, p, threshold = self.distance(proj)
            return drifted, p, distance, {"distance": distance, "threshold": threshold}
        assert self._evidently is not None  # __init__ refused any other method
        cols = [f"pc{j}" for j in range(proj.shape[1])]
        score, drifted, _ = self._evidently(
            pd.DataFrame(proj, columns=cols), pd.DataFrame(self.reference, columns=cols)
        )
        return bool(drifted), None, float(score), {}

    @classmethod
    def for_reference(cls, reference: Reference, config: plugin.MonitorConfig) -> EmbeddingDrift:
        return cls(
            reference.embeddings,
            config.embedding_method,
            early=reference.early if reference.early.size else None,
            # the directions the classes differ in: one per class, at least 8 (docs/drift.md)
            components=max(8, len(reference.class_names)),
            alpha=config.alpha,
            min_samples=config.min_samples,
        )

    def evaluate(self, window: plugin.Inputs | plugin.Outcomes) -> plugin.MonitorResult:
        inputs = plugin.inputs_of(window, self.name)
        return self(inputs.embeddings, inputs.early)
