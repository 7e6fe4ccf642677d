"""The ``image`` monitor: image statistics (brightness, contrast, sharpness, noise, blockiness,
size, per-channel moments) against the reference: the novelty of each image (k-NN distance, K-S
and tail tests against held-out reference images), the window's mean (Hotelling) over all rows and
within the class predicted for each, and a K-S test per statistic, Bonferroni-combined."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from monitoring.drift import monitor as plugin
from monitoring.drift.twosample import MeanShift, Novelty, WithinClass, bonferroni, ks_columns
from nicheloop.contracts import IMAGE_STATS
from nicheloop.reference import Reference


def stat_features(stats: np.ndarray) -> np.ndarray:
    """Image statistics on scales where distances mean something: sharpness and blockiness logged."""
    x = np.asarray(stats, np.float64).copy()
    for name in ("sharpness", "noise", "blockiness"):
        j = IMAGE_STATS.index(name)
        x[:, j] = np.log1p(np.maximum(x[:, j], 0.0))
    return x


@plugin.register_monitor
class ImageDrift:
    """Image statistics against one reference: the novelty of each image (all statistics at once,
    which catches a shift that touches a fraction of the traffic), their mean (Hotelling, over all
    the traffic and within each predicted class, which sees a mixture move the mean before its
    tails) and K-S per statistic (which catches a small shift of everything and says which
    statistic moved)."""

    name: ClassVar[str] = "image"
    feeds: ClassVar[plugin.Feed] = "inputs"

    def __init__(self, ref: Reference, *, alpha: float = 0.01, min_samples: int = 30) -> None:
        self.alpha, self.min_samples = alpha, min_samples
        self.ready = len(ref.stats) >= plugin.MIN_REFERENCE
        if self.ready:
            self.ref = stat_features(ref.stats)
            self.ref_sorted = np.sort(self.ref, axis=0)
            self.novelty = Novelty(self.ref)
            self.mean_shift = MeanShift(self.ref)
            classes = ref.probs.shape[1] if ref.probs.ndim == 2 else 0
            self.within_class = (
                WithinClass(self.ref, ref.probs.argmax(1), classes)
                if len(ref.probs) == len(ref.stats) and classes
                else None
            )

    def __call__(self, stats: np.ndarray, predicted: np.ndarray | None = None) -> plugin.MonitorResult:
        """``predicted``: the class index the model gave each row (leave out to skip the per-class test)."""
        if not self.ready or len(stats) < self.min_samples:
            return plugin.MonitorResult.insufficient("image", len(stats))
        cur = stat_features(stats)
        varies = ~(
            (self.ref.min(0) == self.ref.max(0)) & (cur.min(0) == cur.max(0)) & (cur[0] == self.ref[0])
        )
        p_cols = ks_columns(self.ref_sorted[:, varies], cur[:, varies])
        marginal = dict(zip((n for n, v in zip(IMAGE_STATS, varies) if v), map(float, p_cols)))
        p = self.novelty.p_values(cur) | {
            "marginal": bonferroni(marginal),
            "mean_shift": self.mean_shift.p_value(cur),
        }
        if self.within_class is not None and predicted is not None and len(predicted) == len(cur):
            p["within_class"] = self.within_class.p_value(cur, predicted)
        marginal_p = {f"p_{k}": v for k, v in marginal.items()}
        return plugin.MonitorResult.combined("image", len(cur), p, self.alpha, marginal_p)

    @classmethod
    def for_reference(cls, reference: Reference, config: plugin.MonitorConfig) -> ImageDrift:
        return cls(reference, alpha=config.alpha, min_samples=config.min_samples)

    def evaluate(self, window: plugin.Inputs | plugin.Outcomes) -> plugin.MonitorResult:
        inputs = plugin.inputs_of(window, self.name)
        return self(inputs.stats, inputs.stats_predicted)
