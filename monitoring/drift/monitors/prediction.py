"""The ``prediction`` monitor: the predicted class mix (two-sample chi-square) and the top-class
confidence (K-S) against the reference's."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from monitoring.drift import monitor as plugin
from monitoring.drift.twosample import chi2, ks
from nicheloop.reference import Reference


def prediction_drift(
    ref: Reference, probs: np.ndarray, *, alpha: float, min_samples: int
) -> plugin.MonitorResult:
    """Class mix (chi-square on the predicted class) and confidence (K-S on the top probability)."""
    if (
        len(probs) < min_samples
        or len(ref.probs) < plugin.MIN_REFERENCE
        or probs.shape[1] != ref.probs.shape[1]
    ):
        return plugin.MonitorResult.insufficient("prediction", len(probs))
    p = {
        "class_mix": chi2(ref.probs.argmax(1), probs.argmax(1)),
        "confidence": ks(ref.probs.max(1), probs.max(1)),
    }
    figures = {"mean_confidence": float(probs.max(1).mean())}
    return plugin.MonitorResult.combined("prediction", len(probs), p, alpha, figures)


@plugin.register_monitor
class PredictionDrift(plugin.ReferenceMonitor):
    """:func:`prediction_drift` against one version's reference."""

    name: ClassVar[str] = "prediction"
    feeds: ClassVar[plugin.Feed] = "inputs"

    def evaluate(self, window: plugin.Inputs | plugin.Outcomes) -> plugin.MonitorResult:
        probs = plugin.inputs_of(window, self.name).probs
        return prediction_drift(
            self.reference, probs, alpha=self.config.alpha, min_samples=self.config.min_samples
        )
