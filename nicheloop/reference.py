"""The drift reference a model version carries: what its validation images looked like to it.

Embeddings (pre-logits and pooled early-stage features), image statistics, calibrated
probabilities and true labels of the held-out set the version was evaluated on, with the accuracy
and macro-F1 it scored there. Stored next to the weights in the registry (``reference.npz``), so a
new champion brings its own reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nicheloop.contracts import IMAGE_STATS

FILE = "reference.npz"
LEGACY_FILE = "reference.npy"  # versions registered before image statistics: embeddings only
MIN_ROWS = 20  # reference rows a drift monitor needs (novelty splits them in two halves)


@dataclass(frozen=True)
class Reference:
    embeddings: np.ndarray  # (n, D) pre-logits features
    stats: np.ndarray  # (n, len(IMAGE_STATS)) image statistics, IMAGE_STATS order
    probs: np.ndarray  # (n, K) calibrated probabilities
    labels: np.ndarray  # (n,) true class indices
    class_names: tuple[str, ...]
    accuracy: float = float("nan")
    macro_f1: float = float("nan")
    # (n, E) pooled early-stage features (NicheModel.forward); (0, 0) for versions older than them
    early: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        if any(len(a) != n for a in (self.stats, self.probs, self.labels, self.early) if a.size):
            raise ValueError("reference arrays must have one row per validation image")

    @classmethod
    def embeddings_only(cls, embeddings: np.ndarray) -> Reference:
        """A reference from a version that stored nothing but embeddings (input and prediction
        monitors report insufficient data for it)."""
        return cls(
            np.asarray(embeddings, np.float32),
            np.zeros((0, len(IMAGE_STATS)), np.float32),
            np.zeros((0, 0), np.float32),
            np.zeros(0, np.int64),
            (),
        )

    def in_proportion(self, shares: np.ndarray, *, seed: int = 0) -> Reference:
        """The largest subset of rows whose classes come in ``shares`` (one per class): a held-out
        set drawn image by image (a keyed hash) has a chance class mix, which a mean-shift test of
        the live stream reads as drift. Rows of over-represented classes are dropped at random
        (seeded); classes the rows lack are left out of the proportions. Never under ``MIN_ROWS``
        rows while the whole set has them: a chance mix is a lesser harm than silent monitors."""
        y = self.labels.astype(int)
        counts = np.bincount(y, minlength=len(shares))[: len(shares)]
        want = np.where(counts > 0, np.asarray(shares, np.float64), 0.0)
        if len(y) == 0 or want.sum() <= 0:
            return self
        want = want / want.sum()
        scale = min(counts[c] / want[c] for c in np.flatnonzero(want))
        keep = np.floor(want * scale + 1e-9).astype(int)
        rng = np.random.default_rng(seed)
        rows = np.sort(
            np.concatenate(
                [rng.choice(np.flatnonzero(y == c), keep[c], replace=False) for c in range(len(keep))]
            )
        )
        if len(rows) < MIN_ROWS <= len(y):
            return self
        return self.rows(rows)

    def where(self, keep: np.ndarray) -> Reference:
        """The rows ``keep`` (one bool a row) marks, when there are at least ``MIN_ROWS`` of them;
        else all the rows (a monitor needs that many)."""
        rows = np.flatnonzero(np.asarray(keep, bool))
        return self.rows(rows) if len(rows) >= MIN_ROWS and len(rows) < len(self.labels) else self

    def rows(self, rows: np.ndarray) -> Reference:
        """These rows of every array (the scores stay the whole set's)."""
        return Reference(
            self.embeddings[rows],
            self.stats[rows] if self.stats.size else self.stats,
            self.probs[rows] if self.probs.size else self.probs,
            self.labels[rows],
            self.class_names,
            self.accuracy,
            self.macro_f1,
            early=self.early[rows] if self.early.size else self.early,
        )

    def save(self, folder: Path) -> Path:
        path = folder / FILE
        np.savez_compressed(
            path,
            embeddings=self.embeddings.astype(np.float32),
            stats=self.stats.astype(np.float32),
            probs=self.probs.astype(np.float32),
            labels=self.labels.astype(np.int64),
            class_names=np.array(self.class_names, dtype=str),
            stat_names=np.array(IMAGE_STATS),
            scores=np.array([self.accuracy, self.macro_f1], dtype=np.float64),
            early=self.early.astype(np.float32),
        )
        return path

    @classmethod
    def load(cls, folder: Path) -> Reference:
        """Raises FileNotFoundError if the folder holds no reference of either format."""
        if not (folder / FILE).is_file():
            return cls.embeddings_only(np.load(folder / LEGACY_FILE))
        with np.load(folder / FILE, allow_pickle=False) as z:
            stats = z["stats"]
            if tuple(z["stat_names"]) != IMAGE_STATS:  # statistics changed since: compare only what matches
                stats = np.zeros((0, len(IMAGE_STATS)), np.float32)
            return cls(
                z["embeddings"],
                stats,
                z["probs"],
                z["labels"],
                tuple(map(str, z["class_names"])),
                float(z["scores"][0]),
                float(z["scores"][1]),
                z["early"] if "early" in z.files else np.zeros((0, 0), np.float32),
            )
