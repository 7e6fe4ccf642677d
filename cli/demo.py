"""The demo of the whole loop (an entry point, like the CLI): real stack, synthetic niche images.

bootstrap → serve → stream predictions (a shift half-way) → feedback → review → train → a gated
rollout (shadow, then a canary step, judged on labeled live traffic) → the service answers with the
new champion. Every figure in the summary is read back from the real systems: Kafka offsets, SQL
rows, the MLflow registry, Prometheus, the endpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from cli.progress import RunProgress
from deploy.local import stack
from monitoring.drift.monitor import monitors
from nicheloop.bus import ensure_topics, topic_offsets
from nicheloop.contracts import CHAMPION, FEEDBACK_TOPIC, PREDICTIONS_TOPIC
from nicheloop.errors import NicheloopError
from nicheloop.keys import ROLES, ApiKeys
from nicheloop.registry import Registry
from nicheloop.settings import Settings
from nicheloop.store import Store
from nicheloop.synthetic import DEMO_SHIFT, Shift, SyntheticStream, png_bytes, write_image_folder

if TYPE_CHECKING:
    from rollout.operations import Operations

log = logging.getLogger(__name__)

FEEDBACK_FRACTION = 0.5
REVIEW_BUDGET = 80


def wait_for(what: str, check: Callable[[], bool], timeout: float = 180.0, every: float = 1.0) -> None:
    """Poll ``check`` until it is true. Raises NicheloopError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise NicheloopError(f"timed out after {timeout:.0f}s waiting for {what}")


def scrape(settings: Settings, metric: str, labels: str = "") -> float | None:
    """One sample of the monitor's /metrics (None when absent)."""
    text = httpx.get(f"http://{settings.host}:{settings.metrics_port}/metrics", timeout=10).text
    pattern = rf"^{re.escape(metric)}(\{{[^}}]*{re.escape(labels)}[^}}]*\}})? ([0-9.eE+-]+|NaN)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(2)) if m else None


def stream(
    client: httpx.Client, images: list[tuple[Any, str]], truth: dict[str, str], *, workers: int = 8
) -> None:
    """POST every image to /v1/predict, ``workers`` at a time (8: serving batches them)."""

    def one(item: tuple[Any, str]) -> None:
        resp = client.post("/v1/predict", files={"image": ("img.png", png_bytes(item[0]), "image/png")})
        resp.raise_for_status()
        truth[resp.json()["prediction_id"]] = item[1]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, images))


def wait_consumed(settings: Settings, topic: str, expected: int) -> None:
    label = f'topic="{topic}"'
    wait_for(
        f"the monitor to consume {expected} events of {topic}",
        lambda: (scrape(settings, "nicheloop_events_consumed_total", label) or 0) >= expected,
    )


KEYS_FILE = "demo-keys.json"


def demo_keys(settings: Settings) -> dict[str, str]:
    """One key per role (``demo-app``, ``demo-reviewer``, ...): the demo's callers need keys like
    anyone's. Made once, kept in ``$NICHELOOP_HOME/demo-keys.json`` (0600), said on stderr."""
    path = settings.home.resolve() / KEYS_FILE
    if path.exists():
        return dict(json.loads(path.read_text()))
    keys = ApiKeys(Store(settings.db_url))
    made: dict[str, str] = {
        role: keys.create(name=f"demo-{role}", role=role, created_by="nicheloop demo")[0] for role in ROLES
    }
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        json.dump(made, out, indent=1)
    print(f"demo API keys (one per role) are in {path}", file=sys.stderr, flush=True)
    return made


def as_role(keys: dict[str, str], role: str) -> dict[str, str]:
    """The headers of a call made as ``role`` with the demo's keys."""
    return {"X-API-Key": keys[role]}


def review_queue(client: httpx.Client, truth: dict[str, str], budget: int, reviewer: dict[str, str]) -> int:
    """Label queued items with their true class, as the reviewer whose headers are ``reviewer``
    would; returns how many."""
    done = 0
    while done < budget:
        resp = client.get("/v1/review/next", headers=reviewer)
        if resp.status_code in (204, 429):  # queue empty, or the labeling budget is spent
            break
        resp.raise_for_status()
        task = resp.json()
        client.post(
            f"/v1/review/{task['task_id']}",
            json={"label": truth[task["prediction_id"]], "lease_token": task["lease_token"]},
            headers=reviewer,
        ).raise_for_status()
        done += 1
    return done


DEMO_PLAN = Path(__file__).resolve().parent.parent / "recipes" / "rollouts" / "demo.yaml"
ENDED = ("baked", "rolled_back", "aborted")


def drive_rollout(
    client: httpx.Client,
    ops: Operations,
    images: SyntheticStream,
    *,
    batch: int = 40,
    timeout: float = 600.0,
    shift: Shift = Shift(),
    workers: int = 8,
) -> dict[str, Any]:
    """Send labeled traffic (each answer's true class comes back as feedback; ``workers`` requests
    at a time) until the live rollout ends, saying each move on stderr; returns the final status.

    Raises:
        NicheloopError: the rollout has not ended after ``timeout`` seconds.
    """
    deadline, seen = time.monotonic() + timeout, ""
    while True:
        status = ops.status()
        where = f"{status['state']} ({status.get('step', '')})"
        if where != seen:
            print(f"rollout: {where}; waiting for {status.get('waiting_for')}", file=sys.stderr, flush=True)
            seen = where
        if status["state"] in ENDED:
            return status
        if time.monotonic() > deadline:
            raise NicheloopError(f"the rollout is still {status['state']} after {timeout:.0f}s: {status}")
        if status["state"] in ("shadow", "canary"):
            send_labeled(client, images, batch, shift=shift, workers=workers)
        else:
            time.sleep(1.0)


def send_labeled(
    client: httpx.Client, images: SyntheticStream, n: int, *, shift: Shift = Shift(), workers: int = 8
) -> None:
    """``n`` predictions (``workers`` at a time), then each one's true class as feedback (labels a
    batch late)."""
    truth: dict[str, str] = {}
    stream(client, images.take(n, shift), truth, workers=workers)
    for pid, label in truth.items():
        client.post("/v1/feedback", json={"prediction_id": pid, "label": label}).raise_for_status()


def start_loop(settings: Settings, per_class: int = 100, epochs: int = 6) -> None:
    """Stack up (the monitor with it), bootstrap a champion on synthetic seed labels, deploy serving."""
    from services.app import deploy
    from training.config import TrainConfig
    from training.data import read_image_folder
    from training.finetune import bootstrap

    stack.up(settings)
    ensure_topics(settings.bootstrap_servers)
    seed_dir = settings.home / "seed"
    items = read_image_folder(
        write_image_folder(seed_dir, per_class=per_class, seed=0, size=settings.image_size)
    )
    with RunProgress(settings.ray_results_dir, title="bootstrap the champion", total_epochs=epochs):
        bootstrap(settings, items, TrainConfig(epochs=epochs))
    demo_keys(settings)
    deploy(settings)


def run_demo(settings: Settings, predictions: int = 300, keep_running: bool = False) -> dict[str, Any]:
    """Run the loop once from a clean demo home; returns the summary (figures from real systems)."""
    settings = settings.model_copy(update={"home": settings.home.resolve() / "demo"})
    stack.down(settings)
    shutil.rmtree(settings.home, ignore_errors=True)
    try:
        start_loop(settings)
        return run_loop(settings, predictions)
    finally:
        if not keep_running:
            stack.down(settings)
        else:
            print(
                f"the reviewer page: {settings.serve_url}/review (sign in with the reviewer key in "
                f"{settings.home / KEYS_FILE})",
                file=sys.stderr,
                flush=True,
            )


def run_loop(settings: Settings, predictions: int, epochs: int = 6) -> dict[str, Any]:
    """Traffic with a shift half-way, feedback, review, train, promote; the figures read back."""
    from nicheloop.rollouts import Rollouts
    from rollout.operations import Operations
    from rollout.plan import load_plan
    from rollout.policy import load_policy
    from rollout.retrain import PolicyEvidence, explain
    from training.config import TrainConfig
    from training.finetune import train

    registry, store = Registry(settings.tracking_uri, settings.model_name), Store(settings.db_url)
    champion_before = registry.resolve(CHAMPION).version
    keys = demo_keys(settings)
    client = httpx.Client(base_url=settings.serve_url, timeout=60, headers=as_role(keys, "app"))
    images = SyntheticStream(seed=42, size=settings.image_size)
    truth: dict[str, str] = {}  # prediction id -> true class
    half = predictions // 2
    stream(client, images.take(half), truth)
    wait_consumed(settings, PREDICTIONS_TOPIC, half)
    drift_before = _drift(settings)
    stream(client, images.take(predictions - half, DEMO_SHIFT), truth)
    wait_consumed(settings, PREDICTIONS_TOPIC, predictions)
    drift_after = _drift(settings)

    rng = random.Random(7)
    for pid in rng.sample(sorted(truth), int(len(truth) * FEEDBACK_FRACTION)):
        client.post("/v1/feedback", json={"prediction_id": pid, "label": truth[pid]}).raise_for_status()
    reviewed = review_queue(client, truth, REVIEW_BUDGET, as_role(keys, "reviewer"))
    feedback_sent = topic_offsets(settings.bootstrap_servers, FEEDBACK_TOPIC)
    wait_consumed(settings, FEEDBACK_TOPIC, feedback_sent)

    with RunProgress(settings.ray_results_dir, title="fine-tune a candidate", total_epochs=epochs):
        result = train(settings, TrainConfig(epochs=epochs))
    # the candidate earns its place on live traffic: shadow, a canary step, then champion
    ops = Operations(Rollouts(store), registry)
    started = ops.start(actor="demo", plan=load_plan(DEMO_PLAN))
    rollout_began = time.monotonic()
    final = drive_rollout(client, ops, images, shift=DEMO_SHIFT)
    if final["state"] != "baked":
        m = result.metrics  # what it trained on and how it did offline, beside why it lost live
        raise NicheloopError(
            f"the candidate was not promoted: {ops.history(final['rollout_id'])[-1]['reason']}; "
            f"offline it trained on {m['new_examples']:.0f} new and {m['replayed_examples']:.0f} "
            f"replayed labels and scored {m['holdout_accuracy']:.3f} on {m['holdout_n']:.0f} held-out "
            f"images against its parent's {m['parent_holdout_accuracy']:.3f}"
        )
    wait_for(
        "the service to serve the new champion",
        lambda: _served_version(client, images) == started["candidate"],
        timeout=120,
        every=2.0,
    )
    served_after = _served_version(client, images)
    wait_consumed(settings, PREDICTIONS_TOPIC, topic_offsets(settings.bootstrap_servers, PREDICTIONS_TOPIC))
    feedback_sent = topic_offsets(settings.bootstrap_servers, FEEDBACK_TOPIC)  # the rollout's labels too
    wait_consumed(settings, FEEDBACK_TOPIC, feedback_sent)
    counts = store.counts()
    policy = explain(
        PolicyEvidence(store, registry).gather(time.time()), load_policy(settings.retrain_policy)
    )
    return {
        "predictions_served": counts["predictions"],
        "prediction_events_in_kafka": topic_offsets(settings.bootstrap_servers, PREDICTIONS_TOPIC),
        "feedback_events_in_kafka": feedback_sent,
        "feedback_joined": counts.get("labeled_user", 0) + counts.get("labeled_reviewer", 0),
        "reviewed": counts["review_answers"],
        "review_queued": counts["review_queue"],
        "drift_score_before": drift_before[0],
        "drift_detected_before": drift_before[1],
        "drift_p_values_before": drift_before[2],
        "drift_score_after_shift": drift_after[0],
        "drift_detected_after_shift": drift_after[1],
        "drift_p_values_after_shift": drift_after[2],
        "champion_version_before": champion_before,
        "champion_version_after": registry.resolve(CHAMPION).version,
        "served_version_after": served_after,
        "holdout_accuracy_before": result.metrics["parent_holdout_accuracy"],
        "holdout_accuracy_after": result.metrics["holdout_accuracy"],
        "holdout_examples": int(result.metrics["holdout_n"]),
        # the hold-out images only one of the two got right: the offline gate's paired test
        "holdout_candidate_only": int(result.metrics["holdout_candidate_only"]),
        "holdout_parent_only": int(result.metrics["holdout_parent_only"]),
        "reviewed_by_demo": reviewed,
        "rollout_path": [e["to_state"] for e in ops.history(final["rollout_id"])],
        "rollout_seconds": round(time.monotonic() - rollout_began, 1),
        # what the controller's retraining policy makes of it now (it would start the next run)
        "policy_verdict": "{action} ({rule}): {reason}".format(**policy["decision"]),
    }


def _drift(settings: Settings) -> tuple[float | None, bool | None, dict[str, float]]:
    """The highest latest drift score of the input and prediction monitors (1 - p-value), whether
    any of their alarms is raised, and each monitor's p-value."""
    scores, alarms, p_values = [], [], {}
    for monitor in monitors("inputs"):
        labels = f'monitor="{monitor}"'
        # from the p-value: the score gauge holds the method's own statistic for some embedding
        # methods (Evidently's distance), on another scale than the others' 1 - p
        p_value, detected = (
            scrape(settings, name, labels) for name in ("nicheloop_drift_p_value", "nicheloop_drift_detected")
        )
        if p_value is not None and math.isfinite(p_value):
            scores.append(1.0 - p_value)
            p_values[monitor] = round(p_value, 5)
        alarms += [bool(detected)] if detected is not None else []
    return (max(scores) if scores else None), (any(alarms) if alarms else None), p_values


def _served_version(client: httpx.Client, images: SyntheticStream) -> str:
    img, _ = images.take(1, Shift())[0]
    resp = client.post("/v1/predict", files={"image": ("probe.png", png_bytes(img), "image/png")})
    resp.raise_for_status()
    return str(resp.json()["model_version"])
