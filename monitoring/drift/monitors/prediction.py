"""The ``prediction`` monitor: the predicted class mix (two-sample chi-square) and the top-class
confidence (K-S) against the reference's."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from monitoring.drift.monitor import (
    MIN_REFERENCE,
    Feed,
    Inputs,
    MonitorResult,
    Outcomes,
    ReferenceMonitor,
    register_monitor,
)
from monitoring.drift.twosample import bonferroni, chi2, ks
from nicheloop.reference import Reference


def prediction_drift(ref: Reference, probs: np.ndarray, alpha: float, min_samples: int) -> MonitorResult:
    """Class mix (chi-square on the predicted class) and confidence (K-S on the top probability)."""
    if len(probs) < min_samples or len(ref.probs) < MIN_REFERENCE or probs.shape[1] != ref.probs.shape[1]:
        return MonitorResult.insufficient("prediction", len(probs))
    p = {
        "class_mix": chi2(ref.probs.argmax(1), probs.argmax(1)),
        "confidence": ks(ref.probs.max(1), probs.max(1)),
    }
    combined = bonferroni(p)
    return MonitorResult(
        "prediction",
        "ok",
        len(probs),
        combined < alpha,
        combined,
        1.0 - combined,
        {f"p_{k}": v for k, v in p.items()} | {"mean_confidence": float(probs.max(1).mean())},
    )


@register_monitor
class PredictionDrift(ReferenceMonitor):
    """:func:`prediction_drift` against one version's reference."""

    name: ClassVar[str] = "prediction"
    feeds: ClassVar[Feed] = "inputs"

    def evaluate(self, window: Inputs | Outcomes) -> MonitorResult:
        if not isinstance(window, Inputs):
            raise TypeError("the prediction monitor scores windows of predictions (Inputs)")
        return prediction_drift(self.reference, window.probs, self.config.alpha, self.config.min_samples)
