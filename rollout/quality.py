"""How a version does per class, and how a candidate differs from its champion, for the operator
page: confusion matrices, precision and recall with their counts from delayed labels, the
predicted-class mix and confidence over time, and the shadow pairs where the two disagree.

Accuracy alone hides a class the model has stopped seeing or a class it now swallows; the counts
beside every figure say how far to trust it (three labels make no recall).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from nicheloop.contracts import aware
from nicheloop.rollouts import Rollout, Rollouts, Scored
from nicheloop.store import LabeledExample, Prediction, Store

MAX_ROWS = 50_000  # the newest rows a figure reads: a page answers in a second, not a minute
GALLERY = 24  # disagreements shown


def class_figures(truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Confusion matrix (rows: true class, columns: predicted), per-class precision, recall and
    their counts, and accuracy; a figure without a denominator is None. Labels outside ``classes``
    get their own row and column at the end."""
    names = list(classes) + sorted((set(truth) | set(predicted)) - set(classes))
    at = {c: i for i, c in enumerate(names)}
    m = np.zeros((len(names), len(names)), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        m[at[t], at[p]] += 1
    rows, cols, hits = m.sum(1), m.sum(0), np.diag(m)
    per_class = [
        {
            "class": c,
            "labeled": int(rows[i]),
            "predicted": int(cols[i]),
            "correct": int(hits[i]),
            "precision": float(hits[i] / cols[i]) if cols[i] else None,
            "recall": float(hits[i] / rows[i]) if rows[i] else None,
        }
        for i, c in enumerate(names)
    ]
    n = int(m.sum())
    return {
        "classes": names,
        "confusion": m.tolist(),
        "per_class": per_class,
        "n": n,
        "accuracy": float(np.trace(m) / n) if n else None,
    }


@dataclass(frozen=True)
class Quality:
    """Reads the store for the operator page's per-class and versions views."""

    store: Store

    def labeled(self, version: str, *, source: str | None, since: datetime) -> tuple[list[str], list[str]]:
        """(truth, predicted) of the labels given to ``version``'s predictions since ``since``
        (of one ``source``: ``user`` labels say how the traffic goes; a reviewer's are of the items
        the sampler picked as hard)."""
        query = (
            select(LabeledExample.label, LabeledExample.predicted_label)
            .where(
                LabeledExample.model_version == version,
                LabeledExample.predicted_label.is_not(None),
                LabeledExample.created_at >= since,
            )
            .order_by(LabeledExample.id.desc())
            .limit(MAX_ROWS)
        )
        if source is not None:
            query = query.where(LabeledExample.source == source)
        with Session(self.store.engine) as s:
            rows = s.execute(query).all()
        return [r.label for r in rows], [r.predicted_label or "" for r in rows]

    def class_names(self, version: str) -> list[str]:
        """The class names ``version`` predicts, in its order (from one of its predictions)."""
        with Session(self.store.engine) as s:
            names = s.scalar(
                select(Prediction.class_names).where(Prediction.model_version == version).limit(1)
            )
        return list(names or [])

    def mix(self, version: str, *, since: datetime, until: datetime, buckets: int = 24) -> dict[str, Any]:
        """The champion arm's predicted-class counts and mean top-class confidence per time bucket,
        the buckets spanning from its first prediction since ``since`` to ``until``."""
        with Session(self.store.engine) as s:
            rows = s.execute(
                select(Prediction.created_at, Prediction.label, Prediction.probs)
                .where(
                    Prediction.model_version == version,
                    Prediction.created_at >= since,
                    (Prediction.arm == "champion") | Prediction.arm.is_(None),
                )
                .order_by(Prediction.created_at.desc())
                .limit(MAX_ROWS)
            ).all()
        since = _first(rows, since)
        t0, span = since.timestamp(), max(1.0, until.timestamp() - since.timestamp())
        counts: list[dict[str, int]] = [{} for _ in range(buckets)]
        confidence: list[list[float]] = [[] for _ in range(buckets)]
        for row in rows:
            at, label, probs = row.created_at, str(row.label), list(row.probs or [])
            b = min(buckets - 1, max(0, int(buckets * (aware(at).timestamp() - t0) / span)))
            counts[b][label] = counts[b].get(label, 0) + 1
            confidence[b].append(max(float(p) for p in probs) if probs else 0.0)
        return {
            "since": since.isoformat(),
            "until": until.isoformat(),
            "counts": counts,
            "confidence": [float(np.mean(c)) if c else None for c in confidence],
        }

    def agreement(self, *, since: datetime, until: datetime, buckets: int = 24) -> dict[str, Any]:
        """How often the model's answer was the human's, per time bucket and source (``user``:
        the traffic's; ``reviewer``: the hard items the sampler picked), whichever version answered."""
        with Session(self.store.engine) as s:
            rows = s.execute(
                select(
                    LabeledExample.created_at,
                    LabeledExample.source,
                    LabeledExample.label,
                    LabeledExample.predicted_label,
                )
                .where(LabeledExample.created_at >= since, LabeledExample.predicted_label.is_not(None))
                .order_by(LabeledExample.id.desc())
                .limit(MAX_ROWS)
            ).all()
        since = _first(rows, since)
        t0, span = since.timestamp(), max(1.0, until.timestamp() - since.timestamp())
        out: dict[str, list[dict[str, int]]] = {
            src: [{"n": 0, "agree": 0} for _ in range(buckets)] for src in ("user", "reviewer")
        }
        for row in rows:
            if row.source not in out:
                continue
            b = min(buckets - 1, max(0, int(buckets * (aware(row.created_at).timestamp() - t0) / span)))
            out[row.source][b]["n"] += 1
            out[row.source][b]["agree"] += int(row.label == row.predicted_label)
        return {"since": since.isoformat(), "until": until.isoformat(), **out}

    def versions(self, rollouts: Rollouts, rollout: Rollout) -> dict[str, Any]:
        """Champion against candidate over the rollout so far: each arm's per-class figures on its
        own labeled traffic, both on the same labeled images (the shadow pairs), and the pairs
        where they disagree (newest first, with the images and the label where one came)."""
        trail = rollouts.history(rollout.id, limit=1000)  # oldest first: its start is the first
        since = trail[0].at.timestamp() if trail else rollout.entered_at
        arms = rollouts.scored(rollout, since=since)
        classes = _classes(arms)

        def figures(scored: list[Scored]) -> dict[str, Any]:
            known = [x for x in scored if x.truth is not None]
            return class_figures([x.truth or "" for x in known], [x.predicted for x in known], classes)

        shadow = arms["shadow"]
        paired = [x for x in shadow if x.truth is not None and x.twin is not None]
        truth = [x.truth or "" for x in paired]
        differ = [x for x in shadow if x.twin is not None and x.twin != x.predicted]
        return {
            "rollout_id": rollout.id,
            "state": rollout.state,
            "champion": rollout.champion,
            "candidate": rollout.candidate,
            "champion_live": figures(arms["champion"]),
            "candidate_live": figures(arms["candidate"] + shadow),
            "same_images": {
                "champion": class_figures(truth, [x.twin or "" for x in paired], classes),
                "candidate": class_figures(truth, [x.predicted for x in paired], classes),
            },
            "shadow_pairs": len(shadow),
            "disagreements": len(differ),
            "gallery": [
                {"image": x.image_sha256, "champion": x.twin, "candidate": x.predicted, "truth": x.truth}
                for x in differ[-GALLERY:][::-1]
            ],
        }


def _first(rows: Sequence[Any], since: datetime) -> datetime:
    """The oldest row's time if it is after ``since``: a chart spends its width where data is."""
    times = [aware(r.created_at) for r in rows]
    return max(since, min(times)) if times else since


def _classes(arms: dict[str, list[Scored]]) -> list[str]:
    """The class names the arms' predictions carry (the champion's first)."""
    for arm in ("champion", "shadow", "candidate"):
        if arms[arm]:
            return list(arms[arm][0].class_names)
    return []
