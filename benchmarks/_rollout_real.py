"""The rollout benchmark's pass through the real stack: Kafka, MLflow, the SQL store, Ray Serve with
the champion's and the candidate's deployments, and the controller process; one rollout per scenario
on labeled synthetic traffic (each answer's true class comes back as feedback one batch later), and
what shadow mirroring costs the champion's p99.

Each scenario's candidate is made from the champion it is measured against: its own weights (equal;
and the better one, against a champion made 5 points worse), a bias towards one class tuned until
it is 10 points worse, a temperature tuned until its ECE is 0.1 higher, or its own weights registered
with a serving fault (:mod:`services.faults`: 5 % of calls fail; 5 % take 300 ms more).
"""

from __future__ import annotations

import copy
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ray
import torch

from cli.demo import as_role, demo_keys, drive_rollout, start_loop
from deploy.local import stack
from nicheloop.calibration import expected_calibration_error
from nicheloop.contracts import CANDIDATE, CHAMPION
from nicheloop.model import NicheModel
from nicheloop.registry import LoadedVersion, Registry, VersionInfo
from nicheloop.rollouts import Rollouts
from nicheloop.settings import Settings
from nicheloop.store import Store
from nicheloop.synthetic import SyntheticStream, png_bytes
from rollout.operations import Operations
from rollout.plan import RolloutPlan
from services.faults import ServingFault

# the default gates and thresholds on a clock of seconds: every image mirrored in shadow, one canary
# step at half the traffic, a hundred labels a step and a 10-point margin (the default 3 points needs
# about 2,000 labels a step: hours of this machine's traffic)
PLAN = RolloutPlan(
    shadow_share=1.0,
    steps=(0.5,),
    min_step_s=3,
    max_step_s=900,
    min_labels=100,
    bake_s=3,
    interval_s=1,
    accuracy_margin=0.1,
)
EVAL_IMAGES = 400  # the synthetic images each candidate is tuned on
# requests at once: two keep both cores busy without queueing, so the champion's p99 stays near its
# unloaded value and +300 ms on a candidate's slow calls stands out (at 8 its p99 was ~300 ms itself)
WORKERS = 2


def _settings(home: Path) -> Settings:
    """Ports of their own, so a default stack or the integration tests' may run beside."""
    return Settings(
        home=home,
        kafka_port=39092,
        kafka_controller_port=39093,
        mlflow_port=35000,
        ray_port=36379,
        ray_worker_ports=(30000, 31999),
        serve_port=38000,
        ingress_ports=(38100, 38199),
        metrics_port=39100,
        controller_port=39110,
    )


class Tuner:
    """Accuracy and ECE of a model on one fixed set of synthetic images."""

    def __init__(self, size: int) -> None:
        taken = SyntheticStream(seed=99, size=size).take(EVAL_IMAGES)
        self.images = [image for image, _ in taken]
        self.labels = [label for _, label in taken]

    def probs(self, model: NicheModel) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            probs = np.concatenate(
                [
                    model.infer(model.preprocess(self.images[i : i + 64])).probs
                    for i in range(0, EVAL_IMAGES, 64)
                ]
            )
        return probs, np.array([model.class_names.index(y) for y in self.labels])

    def accuracy(self, model: NicheModel) -> float:
        probs, y = self.probs(model)
        return float((probs.argmax(1) == y).mean())

    def ece(self, model: NicheModel) -> float:
        return expected_calibration_error(*self.probs(model))


def _bisect(make: Callable[[float], NicheModel], score: Callable[[NicheModel], float], goal: float,
            lo: float, hi: float, steps: int = 12) -> NicheModel:  # fmt: skip
    """The model ``make(x)`` whose ``score`` is nearest ``goal``, ``score`` rising with ``x`` on [lo, hi]."""
    best: tuple[float, NicheModel] | None = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        model = make(mid)
        got = score(model)
        if best is None or abs(got - goal) < best[0]:
            best = (abs(got - goal), model)
        lo, hi = (mid, hi) if got < goal else (lo, mid)
    assert best is not None
    return best[1]


def _biased(model: NicheModel, bias: float) -> NicheModel:
    """``model`` with ``bias`` added to its first class's logit: it says that class more often."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.net.get_classifier().bias[0] += bias
    return out


def _tempered(model: NicheModel, factor: float) -> NicheModel:
    out = copy.deepcopy(model)
    out.extra["temperature"] = model.temperature * factor
    return out


def worse(model: NicheModel, tuner: Tuner, points: float) -> NicheModel:
    """``model`` made ``points`` less accurate on the tuner's images (a bias towards one class)."""
    goal = tuner.accuracy(model) - points
    return _bisect(lambda b: _biased(model, b), lambda m: -tuner.accuracy(m), -goal, 0.0, 30.0)


def miscalibrated(model: NicheModel, tuner: Tuner, ece_increase: float) -> NicheModel:
    """``model`` with its temperature raised until its ECE is ``ece_increase`` higher (as accurate;
    searched on a log scale: a near-perfect model's logits are large)."""
    goal = tuner.ece(model) + ece_increase
    return _bisect(lambda x: _tempered(model, 10**x), tuner.ece, goal, 0.0, 4.0, steps=16)


def _register(
    registry: Registry, base: LoadedVersion, model: NicheModel, scenario: str, *, parent: str
) -> VersionInfo:
    """``model`` as a new version trained from ``parent`` (the champion it is measured against); it
    claims its base's held-out accuracy, so the offline gate lets it through and the live gates
    decide (as for a candidate whose offline figures mislead)."""
    accuracy = base.reference.accuracy if base.reference is not None else 0.9
    return registry.register(
        model,
        base.reference,  # type: ignore[arg-type]
        params={"benchmark": "rollout", "scenario": scenario},
        metrics={"holdout_accuracy": accuracy, "parent_holdout_accuracy": accuracy},
        lineage={"parent_version": parent},
        alias=CANDIDATE,
    )


def _p99_ms(client: httpx.Client, images: list[bytes], *, concurrency: int) -> float:
    """Client-side p99 of the champion's answers to ``images``, ``concurrency`` at a time."""

    def one(data: bytes) -> float:
        began = time.perf_counter()
        client.post("/v1/predict", content=data).raise_for_status()
        return (time.perf_counter() - began) * 1000

    with ThreadPoolExecutor(concurrency) as pool:
        ms = sorted(pool.map(one, images))
    return ms[min(len(ms) - 1, int(0.99 * len(ms)))]


def shadow_cost(
    client: httpx.Client,
    ops: Operations,
    version: str,
    size: int,
    *,
    share: float,
    requests: int,
    concurrency: int,
    rounds: int = 3,
) -> dict[str, float]:
    """The champion's p99 with no rollout, then with ``share`` of requests mirrored to candidate
    ``version`` (a rollout kept in shadow by a long ``min_step_s``: a paused one mirrors nothing;
    rolled back after), in alternating rounds so that drift in the machine's load falls on both: the
    ratio is what shadow costs callers, and the share of mirrored calls the candidate answered says
    the mirroring happened."""
    images = [png_bytes(image) for image, _ in SyntheticStream(seed=21, size=size).take(requests)]
    plan = PLAN.model_copy(update={"shadow_share": share, "min_step_s": 3600.0, "max_step_s": 7200.0})
    alone: list[float] = []
    mirrored: list[float] = []
    answered = 0  # shadow calls the candidate answered: mirroring that drops everything costs nothing
    for _ in range(rounds):
        _p99_ms(client, images[:100], concurrency=concurrency)  # warm
        alone.append(_p99_ms(client, images, concurrency=concurrency))
        started = ops.start(actor="benchmark", version=version, plan=plan)
        _p99_ms(client, images[:100], concurrency=concurrency)  # the candidate loads its model
        mirrored.append(_p99_ms(client, images, concurrency=concurrency))
        time.sleep(3.0)  # the gateways flush their arm counts every rollout_refresh_s (2 s)
        ops.act("rollback", actor="benchmark", reason="measured shadow's cost")
        shadow = ops.rollouts.arm_calls(int(started["rollout_id"]), since=0.0).get("shadow")
        answered += 0 if shadow is None else shadow.calls - shadow.errors
    a, m = statistics.median(alone), statistics.median(mirrored)
    return {
        "shadow_share": share,
        "concurrency": concurrency,
        "champion_p99_ms_alone": round(a, 1),
        "champion_p99_ms_shadowed": round(m, 1),
        "ratio": round(m / a, 3),
        "shadow_answered_share": round(answered / (rounds * (requests + 100) * share), 3),
    }


def _decision(ops: Operations, final: dict[str, Any], began: float) -> dict[str, Any]:
    """What the audit trail says of a finished rollout: where it ended, how long and on how many
    labels it took, the largest share the candidate had, the gate that decided."""
    trail = ops.history(final["rollout_id"])
    decided = next((e for e in trail if e["to_state"] in ("rolled_back", "promoted")), trail[-1])
    figures = {g["gate"]: g.get("figures", {}) for g in decided.get("figures") or []}
    labels = max(
        (f.get(k, 0.0) for f in figures.values() for k in ("candidate_labels", "labeled")), default=0.0
    )
    at = datetime.fromisoformat(decided["at"]).timestamp()
    return {
        "final_state": final["state"],
        "path": [e["to_state"] for e in trail],
        "seconds_to_decision": round(at - began, 1),
        "intervals_to_decision": round((at - began) / PLAN.interval_s),
        "labels_at_decision": int(labels),
        "max_candidate_share": max(float(e["to_share"]) for e in trail),
        "reason": decided["reason"][:300],
    }


def real_pass(
    *, epochs: int = 4, per_class: int = 60, shadow_requests: int = 300, only: frozenset[str] | None = None
) -> dict[str, Any]:
    """Every scenario (or those in ``only``) once through the real stack (started in a temporary
    home, stopped after); shadow's cost is measured before ``equal``."""
    home = Path(tempfile.mkdtemp(prefix="nicheloop-bench-rollout-"))
    settings = _settings(home)
    out: dict[str, Any] = {"plan": PLAN.model_dump(), "scenarios": {}}
    try:
        began = time.perf_counter()
        start_loop(settings, per_class=per_class, epochs=epochs)
        out["stack_start_s"] = round(time.perf_counter() - began, 1)
        registry = Registry(settings.tracking_uri, settings.model_name)
        ops = Operations(Rollouts(Store(settings.db_url)), registry)
        base = registry.load(registry.resolve(CHAMPION).version)
        tuner = Tuner(settings.image_size)
        out["champion"] = {"accuracy": tuner.accuracy(base.model), "ece": tuner.ece(base.model)}
        own = base.model
        makers: dict[str, Callable[[], NicheModel]] = {
            "equal": lambda: own,
            "better_5": lambda: own,
            "worse_10": lambda: worse(own, tuner, 0.10),
            "errors_5pct": lambda: ServingFault(error_rate=0.05).declare(copy.deepcopy(own)),
            # 5 % of calls 300 ms late, so the p99 is one of them (at 2 % it sits on their edge)
            "p99_plus_300ms": lambda: ServingFault(slow_share=0.05, slow_ms=300).declare(copy.deepcopy(own)),
            "miscalibrated": lambda: miscalibrated(own, tuner, 0.10),
        }
        app_key = as_role(demo_keys(settings), "app")
        with httpx.Client(base_url=settings.serve_url, timeout=60, headers=app_key) as client:
            for name, make in makers.items():
                if only is not None and name not in only:
                    continue
                if name == "better_5":  # against a champion 5 points worse, recorded by hand
                    weak = _register(
                        registry, base, worse(own, tuner, 0.05), "weak_champion", parent=base.info.version
                    )
                    ops.adopt(
                        actor="benchmark", reason="a weaker champion for better_5", version=weak.version
                    )
                candidate = make()
                figures = {"accuracy": tuner.accuracy(candidate), "ece": tuner.ece(candidate)}
                champion = ops.rollouts.champion() or base.info.version
                version = _register(registry, base, candidate, name, parent=champion)
                if name == "equal":  # at the default plan's share, and with every request mirrored
                    out["shadow_cost"] = [
                        shadow_cost(
                            client,
                            ops,
                            version.version,
                            settings.image_size,
                            share=share,
                            requests=shadow_requests,
                            concurrency=WORKERS,
                        )
                        for share in (RolloutPlan().shadow_share, 1.0)
                    ]
                started = time.time()
                ops.start(actor="benchmark", version=version.version, plan=PLAN)
                images = SyntheticStream(seed=len(out["scenarios"]) + 30, size=settings.image_size)
                final = drive_rollout(client, ops, images, batch=40, timeout=900, workers=WORKERS)
                out["scenarios"][name] = {"candidate": figures} | _decision(ops, final, started)
                if ops.rollouts.champion() != base.info.version:  # the next scenario starts from the base
                    ops.adopt(
                        actor="benchmark", reason="back to the base champion", version=base.info.version
                    )
                print(name, out["scenarios"][name], flush=True)
    finally:
        if ray.is_initialized():  # else the driver aborts once the stack's Ray head is gone
            ray.shutdown()
        stack.down(settings)
        shutil.rmtree(home, ignore_errors=True)
    return out
