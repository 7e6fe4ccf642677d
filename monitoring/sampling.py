"""The active sampler: every few predictions, queue the batch of recent traffic most worth a label.

It keeps the last ``pool`` unlabeled predictions of the served model version and, every
``every`` predictions, runs :func:`monitoring.selection.select_batch` (the hybrid strategy by
default) against the covered set: a FAISS index of the embeddings already labeled or queued,
seeded with the version's reference embeddings, kept up to date from feedback events and
persisted under ``$NICHELOOP_HOME/sampling``. Batches never overflow the queue's
``max_depth``. A new model version brings a new embedding space, hence its own index.

With ``dispute_share`` set, while a candidate runs in shadow the images it and the champion answer
differently come first (that share of a batch, above every other item in the queue): only those
pairs decide the shadow's paired test, and they are the images one of the two models has wrong.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from monitoring.index import EmbeddingIndex
from monitoring.metrics import MonitorMetrics
from monitoring.selection import NEAR_RADIUS, select_batch
from monitoring.strategies import Context, Pool, strategy
from nicheloop.contracts import FeedbackEvent, PredictionEvent
from nicheloop.errors import NotFound
from nicheloop.review import ReviewQueue
from nicheloop.review.queue import DISPUTED
from nicheloop.store import Store

log = logging.getLogger(__name__)

NEIGHBOURS = 6  # labeled look-alikes a review item carries
NEIGHBOUR_POOL = 32  # nearest covered keys searched for them (queued and reference ones are not labeled)


@dataclass(frozen=True)
class SamplerConfig:
    strategy: str = "default"
    every: int = 50
    batch: int = 10
    pool: int = 2000
    class_quota: float = 0.3
    approx_after: int = 50_000
    near_radius: float = NEAR_RADIUS
    save_every_s: float = 60.0  # the index is also rebuilt from the store at start, so nothing is lost
    alarm_share: float = 0.8  # while a drift alarm holds: the share of a batch from traffic served since
    # the share of a batch for images a shadow candidate answered otherwise (off: docs/loop.md measured
    # no gain on the closed-loop benchmark, where those labels taught the next version less)
    dispute_share: float = 0.0


@dataclass(frozen=True)
class _Candidate:
    sha: str
    label: str
    probs: np.ndarray
    embedding: np.ndarray
    served_at: float = 0.0  # seconds since the epoch


MIN_BEFORE = 20  # pre-alarm candidates under which the class mix before is not judged


def shift_weights(before: np.ndarray, after: np.ndarray, classes: int, cap: float = 4.0) -> list[float]:
    """Per predicted class, how much more of the traffic since the alarm it takes than before (its
    share's ratio, between 1 and ``cap``): the classes a shift pushes images into get more of the
    batch's class quota. Equal weights with fewer than :data:`MIN_BEFORE` rows before."""
    if len(before) < MIN_BEFORE or len(after) == 0:
        return [1.0] * classes
    pre = np.bincount(before, minlength=classes)[:classes] / len(before)
    post = np.bincount(after, minlength=classes)[:classes] / len(after)
    ratio = (post + 1.0 / len(after)) / (pre + 1.0 / len(before))  # add-one: no class from nothing
    return np.clip(ratio, 1.0, cap).tolist()


def alarm_split(
    served_at: np.ndarray, predicted: np.ndarray, alarm: float, *, k: int, share: float, classes: int
) -> tuple[np.ndarray, int, list[float]]:
    """While an alarm holds: which candidates were served since it (a mask), how many of a batch of
    ``k`` go to them (``share`` of it, at most all of them), and the class weights of their quota."""
    is_after = np.asarray(served_at) >= alarm
    weights = shift_weights(predicted[~is_after], predicted[is_after], classes)
    return is_after, min(int(is_after.sum()), round(k * share)), weights


def dispute_quota(disputed: int, k: int, share: float) -> int:
    """How many of a batch of ``k`` go to the ``disputed`` candidates: ``share`` of it, at most all."""
    return min(disputed, round(k * share))


class ActiveSampler:
    """A monitoring stage: ``sampler(topic, event)`` returns how many items it queued (0 mostly).

    Args:
        reference_for: the reference embeddings (n, D) of a model version; they seed the covered
            set and their mean centres the embedding space.
        alarm_since: when the oldest of a version's drift alarms that still hold was raised
            (seconds since the epoch; None: none holds). While one holds, ``alarm_share`` of each
            batch comes from traffic served since, and the class quotas lean to the classes the
            shift pushed images into.
    """

    def __init__(
        self,
        store: Store,
        queue: ReviewQueue,
        index_dir: Path,
        config: SamplerConfig,
        reference_for: Callable[[str], np.ndarray],
        metrics: MonitorMetrics,
        alarm_since: Callable[[str], float | None] | None = None,
    ) -> None:
        strategy(config.strategy)  # unknown names fail at start, not at the first batch
        self.store, self.queue, self.index_dir, self.config = store, queue, index_dir, config
        self.reference_for, self.metrics, self.alarm_since = reference_for, metrics, alarm_since
        self.version: str | None = None
        self.index: EmbeddingIndex | None = None
        self.pool: OrderedDict[str, _Candidate] = OrderedDict()
        self.covered_hashes: set[str] = set()
        self.disputed: set[str] = set()  # ids a shadow candidate answered otherwise (pruned to the pool)
        # shadow answers whose champion twin has not come yet (the topic does not order the two)
        self.shadow_said: OrderedDict[str, str] = OrderedDict()
        self.seen = 0
        self.saved_at = 0.0

    def __call__(self, topic: str, event: BaseModel) -> int:
        if isinstance(event, FeedbackEvent):
            self._on_feedback(event)
            return 0
        if isinstance(event, PredictionEvent) and event.arm == "shadow" and event.paired_with:
            if self.config.dispute_share:  # off: nothing to track
                self._on_shadow(event.paired_with, event.label)
            return 0
        if not isinstance(event, PredictionEvent) or event.arm != "champion":
            return 0  # a rollout's candidate is judged by its gates, not queued as the champion's
        if event.model_version != self.version:
            self._switch(event.model_version, len(event.embedding))
        said = self.shadow_said.pop(event.prediction_id, None)
        if said is not None and said != event.label:
            self.disputed.add(event.prediction_id)
        self.pool[event.prediction_id] = _Candidate(
            event.image_sha256,
            event.label,
            np.asarray(event.probs, np.float32),
            np.asarray(event.embedding, np.float32),
            event.created_at.timestamp(),
        )
        while len(self.pool) > self.config.pool:
            self.pool.popitem(last=False)
        self.seen += 1
        return self.select() if self.seen % self.config.every == 0 else 0

    def _index_path(self, version: str) -> Path:
        return self.index_dir / f"covered-v{version}.npz"

    def _switch(self, version: str, dim: int) -> None:
        """Load (or build) the covered set of ``version``; the pool of the old version is dropped."""
        self.save()
        self.version, self.pool, self.disputed = version, OrderedDict(), set()
        path = self._index_path(version)
        index = None
        if path.exists():
            try:
                index = EmbeddingIndex.load(path)
            except ValueError as exc:
                log.error("%s; rebuilding the covered set from the store", exc)
        if index is None or index.dim != dim:
            reference = self._reference(version, dim)
            index = EmbeddingIndex(
                dim, self.config.approx_after, center=reference.mean(axis=0) if len(reference) else None
            )
            index.add(index.prepare(reference), [f"reference-{i}" for i in range(len(reference))])
        ids, emb = self.store.covered_embeddings(version)
        if ids and emb.shape[1] == dim:
            index.add(index.prepare(emb), ids)
        self.index, self.covered_hashes = index, self.store.covered_hashes()
        self._export_index()
        log.info("sampler on model version %s: %d covered embeddings", version, len(index))

    def _reference(self, version: str, dim: int) -> np.ndarray:
        try:
            reference = np.asarray(self.reference_for(version), np.float32)
        except Exception as exc:  # noqa: BLE001 - no reference: start cold (typicality), do not stop
            log.warning("no reference embeddings for version %s (%s); sampling starts cold", version, exc)
            return np.zeros((0, dim), np.float32)
        return (
            reference if reference.ndim == 2 and reference.shape[1] == dim else np.zeros((0, dim), np.float32)
        )

    def _on_shadow(self, twin: str, label: str) -> None:
        """A shadow candidate's answer: its champion twin is disputed if the two differ (kept for the
        twin if that has not come yet, at most ``pool`` of them)."""
        cand = self.pool.get(twin)
        if cand is None:
            self.shadow_said[twin] = label
            while len(self.shadow_said) > self.config.pool:
                self.shadow_said.popitem(last=False)
        elif label != cand.label:
            self.disputed.add(twin)

    def _on_feedback(self, event: FeedbackEvent) -> None:
        """A labeled prediction joins the covered set (if it was made by the current version)."""
        self.pool.pop(event.prediction_id, None)
        if self.index is None or event.prediction_id in self.index:
            return
        try:
            pred = self.store.prediction(event.prediction_id)
        except NotFound:  # its prediction has not arrived yet; the next selection catches it
            return
        if pred.model_version == self.version:
            self.index.add(
                self.index.prepare(np.frombuffer(pred.embedding, np.float32)), [event.prediction_id]
            )
            self.covered_hashes.add(pred.image_sha256)

    def select(self) -> int:
        """Queue one batch from the pool; returns how many items were queued."""
        if self.index is None or not self.pool:
            return 0
        ids = list(self.pool)
        done = self.store.labeled_ids(ids) | self.queue.known(ids)
        for pid in done:
            cand = self.pool.pop(pid)
            self.index.add(self.index.prepare(cand.embedding), [pid])
            self.covered_hashes.add(cand.sha)
        k = min(self.config.batch, self.queue.room(), len(self.pool))
        if k == 0:
            return 0
        self.disputed &= self.pool.keys()  # the ones gone from the pool (labeled, queued, aged out) go
        disputed = [pid for pid in self.pool if pid in self.disputed]
        # a fair draw of the disagreements: the hardest ones (the usual strategy's) are where the
        # candidate is least sure too, and would understate what it wins
        first = self._queue_from(
            disputed, dispute_quota(len(disputed), k, self.config.dispute_share), boost=DISPUTED, fair=True
        )
        self.metrics.review_enqueued_disputed.inc(first)
        queued = first + self._queue_rest(k - first)
        if time.monotonic() - self.saved_at >= self.config.save_every_s:
            self.save()
        return queued

    def _queue_rest(self, k: int) -> int:
        """Up to ``k`` from the pool: while an alarm holds, most from traffic since it, the rest from
        all that is left; how many were queued."""
        if k <= 0 or not self.pool:
            return 0
        alarm = self._alarm()
        if alarm is None:
            return self._queue_from(list(self.pool), k)
        cands = list(self.pool.values())
        is_after, k_after, weights = alarm_split(
            np.array([c.served_at for c in cands]),
            np.array([int(c.probs.argmax()) for c in cands], np.int64),
            alarm,
            k=k,
            share=self.config.alarm_share,
            classes=len(cands[0].probs),
        )
        after = [pid for pid, a in zip(self.pool, is_after) if a]
        since = self._queue_from(after, k_after, weights)
        self.metrics.review_enqueued_after_alarm.inc(since)
        return since + self._queue_from(list(self.pool), k - since)

    def _alarm(self) -> float | None:
        """When the served version's oldest holding alarm was raised (None: none holds, or unknown)."""
        if self.alarm_since is None or self.version is None:
            return None
        try:
            return self.alarm_since(self.version)
        except Exception as exc:  # noqa: BLE001  the store away: sample as without an alarm, not stop
            log.warning("could not read the drift alarms (%s); sampling as if none holds", exc)
            return None

    def _queue_from(
        self,
        ids: list[str],
        k: int,
        class_weights: list[float] | None = None,
        *,
        boost: float = 0.0,
        fair: bool = False,
    ) -> int:
        """Select up to ``k`` of the pool's ``ids`` (``fair``: at random, no class quota) and queue
        them, ``boost`` added to their priorities; how many were queued."""
        if k <= 0 or not ids:
            return 0
        assert self.index is not None
        cands = [self.pool[pid] for pid in ids]
        x = self.index.prepare(np.stack([c.embedding for c in cands]))
        sel = select_batch(
            Pool(np.stack([c.probs for c in cands]), x),
            k,
            Context(covered=self.index, seed=self.seen),
            "random" if fair else self.config.strategy,
            hashes=[c.sha for c in cands],
            covered_hashes=frozenset(self.covered_hashes),
            near_radius=self.config.near_radius,
            class_quota=0.0 if fair else self.config.class_quota,
            class_weights=class_weights,
        )
        queued = 0
        chosen = sel.indices.tolist()
        look_alikes = self._labeled_neighbours(x[chosen]) if chosen else []
        for i, priority, near in zip(chosen, sel.priorities.tolist(), look_alikes):
            pid, cand = ids[i], cands[i]
            queued += self.queue.enqueue(pid, priority + boost, predicted_label=cand.label, neighbours=near)
            self.index.add(x[[i]], [pid])
            self.covered_hashes.add(cand.sha)
            self.pool.pop(pid)
        self._count(queued, sel.exact_duplicates, sel.near_duplicates)
        return queued

    def _labeled_neighbours(self, x: np.ndarray) -> list[list[dict[str, Any]]]:
        """For each prepared row, the nearest labeled images in the covered set (which also holds
        queued ones and the reference, whose images are not stored): the reviewer's look-alikes."""
        assert self.index is not None
        found = self.index.search(x, NEIGHBOUR_POOL)
        labels = self.store.labels_of(sorted({key for row in found for key, _ in row}))
        return [
            [
                {"image_sha256": labels[key][1], "label": labels[key][0], "distance": round(d, 4)}
                for key, d in row
                if key in labels
            ][:NEIGHBOURS]
            for row in found
        ]

    def save(self) -> None:
        """Persist the current version's covered set (between selections at most every ``save_every_s``)."""
        if self.index is not None and self.version is not None:
            self.index.save(self._index_path(self.version))
            self.saved_at = time.monotonic()

    def _count(self, queued: int, exact: int, near: int) -> None:
        m = self.metrics
        m.review_enqueued.inc(queued)
        m.duplicates_suppressed.labels("exact").inc(exact)
        m.duplicates_suppressed.labels("near").inc(near)
        self._export_index()

    def _export_index(self) -> None:
        if self.index is None:
            return
        m = self.metrics
        m.index_size.set(len(self.index))
        m.index_memory.set(self.index.memory_bytes())
        m.index_recall.set(self.index.recall if self.index.recall is not None else 1.0)
        m.index_approximate.set(1.0 if self.index.approximate else 0.0)
