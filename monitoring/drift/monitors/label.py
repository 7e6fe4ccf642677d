"""The ``label`` monitor: the class mix of the labels users send (two-sample chi-square) and the
accuracy on them against the version's validation accuracy (one-sided Fisher exact test: both are
counts, and a small validation set's 100 % is an estimate, not the truth); macro-F1 reported."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy.stats import fisher_exact

from monitoring.drift import monitor as plugin
from monitoring.drift.twosample import chi2, macro_f1
from nicheloop.reference import Reference


def label_drift(
    ref: Reference,
    truth: np.ndarray,
    predicted: np.ndarray,
    *,
    alpha: float,
    min_samples: int,
    tolerance: float = 0.02,
) -> plugin.MonitorResult:
    """Labels users sent (``truth``) against what was predicted for those images.

    Drift: their class mix differs from the validation labels' (chi-square), or the accuracy on
    them is below the validation accuracy minus ``tolerance`` beyond chance: one-sided Fisher exact
    test of the window's right and wrong answers against the validation set's (its count of right
    answers less ``tolerance`` of them). A test against the validation accuracy as if it were
    known raised on calm traffic: 45 of 50 right against 48 of 48 is p = 0.003 that way.
    """
    if len(truth) < min_samples or len(ref.labels) < plugin.MIN_REFERENCE or not np.isfinite(ref.accuracy):
        return plugin.MonitorResult.insufficient("label", len(truth))
    correct, n_ref = int((truth == predicted).sum()), len(ref.labels)
    ref_correct = int(np.clip(round((ref.accuracy - tolerance) * n_ref), 0, n_ref))
    table = [[correct, len(truth) - correct], [ref_correct, n_ref - ref_correct]]
    p = {
        "label_mix": chi2(ref.labels, truth),
        "accuracy": float(fisher_exact(table, alternative="less").pvalue),
    }
    figures = {
        "accuracy": correct / len(truth),
        "macro_f1": macro_f1(truth, predicted),
        "reference_accuracy": ref.accuracy,
        "reference_macro_f1": ref.macro_f1,
    }
    return plugin.MonitorResult.combined("label", len(truth), p, alpha, figures)


@plugin.register_monitor
class LabelDrift(plugin.ReferenceMonitor):
    """:func:`label_drift` against one version's reference, on user labels only (the drift stage
    leaves reviewers' labels out: the sampler picks hard images for them on purpose)."""

    name: ClassVar[str] = "label"
    feeds: ClassVar[plugin.Feed] = "outcomes"

    def evaluate(self, window: plugin.Inputs | plugin.Outcomes) -> plugin.MonitorResult:
        labels, knobs = plugin.outcomes_of(window, self.name), self.config
        return label_drift(
            self.reference, labels.truth, labels.predicted, alpha=knobs.alpha, min_samples=knobs.min_samples
        )
