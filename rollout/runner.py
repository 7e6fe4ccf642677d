"""The rollout controller process: ticks :class:`rollout.controller.Controller` on the live
rollout's interval (one process at a time holds the lease; a second one waits as a hot standby),
announces the audit trail on Kafka, and serves the operators' verbs and Prometheus metrics over
HTTP on ``controller_port`` (the operator page calls these), with the admins' keys, label
exclusions and the audit log."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import FastAPI, Path, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from nicheloop.blobs import BlobStore
from nicheloop.bus import Publisher, ensure_topics
from nicheloop.contracts import DECISIONS_TOPIC, utcnow
from nicheloop.errors import InvalidInput, NicheloopError
from nicheloop.http import (
    PROBLEMS,
    PROMETHEUS_TEXT,
    Gatekeeper,
    OptionalRowId,
    gatekeeper_for,
    install_guards,
    requires,
)
from nicheloop.keys import ROLES, Administration, ApiKeys, Audit, Caller, KeyInfo, Role
from nicheloop.pages import page_file
from nicheloop.registry import Registry
from nicheloop.review import QueuePolicy, ReviewQueue
from nicheloop.rollouts import Rollouts
from nicheloop.settings import Settings, child_env
from nicheloop.spools import SpoolReports
from nicheloop.store import Store
from rollout import pages
from rollout.controller import Controller, kafka_announce
from rollout.evidence import StoreEvidence
from rollout.operations import Operations
from rollout.plan import STOPGAP_PLAN, RolloutPlan, load_plan
from rollout.policy import load_policy
from rollout.retrain import PolicyEvidence, PolicyLoop, PolicyRuns, switch_policy
from rollout.views import add_operator_views

log = logging.getLogger(__name__)

STATES = ("none", "shadow", "canary", "hold", "promoted", "baked", "rolled_back", "aborted")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # who acts is the caller's key, never a field


class StartBody(_Body):
    version: str | None = Field(None, description="The version to roll out (default: the candidate alias's).")
    plan: RolloutPlan | None = Field(None, description="The rollout plan (default: the defaults).")


class ActBody(_Body):
    reason: str = Field("", max_length=2000, description="Why (a forced promotion needs one).")


class ReasonBody(_Body):
    reason: str = Field(..., min_length=1, max_length=2000, description="Why (kept in the audit log).")


class AdoptBody(ActBody):
    version: str | None = Field(None, description="The version to record as champion (default: the alias's).")


class KeyBody(_Body):
    name: str = Field(..., min_length=1, max_length=128, description="Who or what uses the key.")
    role: Role = Field(..., description="app, reviewer, operator or admin.")
    expires_days: float | None = Field(
        None, gt=0, le=3650, description="Days until it expires (default: never)."
    )


class RevokeBody(_Body):
    name: str = Field(..., min_length=1, max_length=128, description="Whose active key to revoke.")


class ExcludeBody(_Body):
    actor: str = Field(
        ..., min_length=1, max_length=128, description="The key name whose labels to leave out."
    )
    reason: str = Field(..., min_length=1, max_length=2000, description="Why (kept with the exclusion).")


class BudgetBody(_Body):
    per_hour: StrictInt | None = Field(
        None, ge=0, le=1_000_000, description="Labels everyone may give an hour."
    )
    per_day: StrictInt | None = Field(None, ge=0, le=1_000_000, description="Labels everyone may give a day.")
    per_reviewer_hour: StrictInt | None = Field(
        None, ge=0, le=1_000_000, description="Labels one reviewer may give an hour."
    )
    per_reviewer_day: StrictInt | None = Field(
        None, ge=0, le=1_000_000, description="Labels one reviewer may give a day."
    )


class SharesBody(_Body):
    gold: float | None = Field(
        None,
        strict=True,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Share of claims given a gold item (known label).",
    )
    overlap: float | None = Field(
        None,
        strict=True,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Share of labeled items a second reviewer labels too.",
    )


def controller_api(
    ops: Operations,
    ticks: dict[str, int] | None = None,
    *,
    gate: Gatekeeper | None = None,
    review: QueuePolicy | None = None,
    blobs: BlobStore | None = None,
    reports: pathlib.Path | None = None,
    policy: PolicyLoop | None = None,
) -> FastAPI:
    """The operators' HTTP surface over ``ops``; ``ticks`` counts the loop's ticks and errors;
    ``gate`` says who calls (default: the API keys of ``ops``' store); ``review``: the queue's
    settings, whose budgets an operator may replace; ``blobs`` and ``reports``: the stored images
    and drift reports the page shows (:func:`rollout.views.add_operator_views`); ``policy``: the
    retraining policy the loop weighs, whose latest verdict the API and metrics show."""
    app = FastAPI(title="nicheloop rollouts", responses=PROBLEMS)
    install_guards(app)
    add_operator_views(app, ops, blobs=blobs, reports=reports)
    app.state.gatekeeper = gate or Gatekeeper(ApiKeys(ops.rollouts.store))
    store = ops.rollouts.store
    audit = Audit(store)
    queue = ReviewQueue(store, review)
    spools = SpoolReports(store)
    operator, admin = requires("operator"), requires("admin")
    steward = requires("operator", "admin")  # revoking, excluding and reading the log: either
    counted = ticks if ticks is not None else {"ticks": 0, "errors": 0}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/rollouts/status")
    def status(_: Caller = operator) -> dict[str, Any]:
        return ops.status() | {"spool": spools.summary(now=time.time())}

    if policy is not None:

        @app.get("/v1/policy/decision")
        def policy_decision(_: Caller = operator) -> dict[str, Any]:
            """The retraining policy's verdict (as of its last look), its evidence and the policy."""
            latest = policy.latest
            if latest is None:  # not looked yet, or another controller holds the policy's lease
                return policy.evidence.explained(time.time(), policy.policy)
            return latest | {"paused": ops.rollouts.policy_pause()}  # a pause shows at once

        @app.post("/v1/policy/pause")
        def pause_policy(request: Request, body: ReasonBody, who: Caller = operator) -> dict[str, Any]:
            """Stop the policy starting runs (it still decides and says so); a run going on finishes."""
            new = switch_policy(
                ops.rollouts, audit, pause=True, who=who, reason=body.reason, source=_source(request)
            )
            return {"paused": ops.rollouts.policy_pause(), "new": new}

        @app.post("/v1/policy/resume")
        def resume_policy(request: Request, body: ReasonBody, who: Caller = operator) -> dict[str, Any]:
            """Let the policy start runs again."""
            new = switch_policy(
                ops.rollouts, audit, pause=False, who=who, reason=body.reason, source=_source(request)
            )
            return {"paused": None, "new": new}

    @app.get("/v1/rollouts/history")
    def history(
        rollout_id: OptionalRowId = None, limit: int = 200, _: Caller = operator
    ) -> list[dict[str, Any]]:
        return ops.history(rollout_id, limit=max(1, min(limit, 1000)))

    @app.post("/v1/rollouts/start", status_code=201)
    def start(request: Request, body: StartBody, who: Caller = operator) -> dict[str, Any]:
        started = ops.start(actor=who.name, version=body.version, plan=body.plan)
        _audit(request, who, "rollout.start", started)
        return started

    @app.post("/v1/rollouts/adopt", status_code=201)
    def adopt(request: Request, body: AdoptBody, who: Caller = operator) -> dict[str, Any]:
        adopted = ops.adopt(actor=who.name, reason=body.reason or "adopted by hand", version=body.version)
        _audit(request, who, "rollout.adopt", adopted, reason=body.reason)
        return adopted

    def verb(action: Literal["pause", "resume", "rollback", "promote"]) -> Any:
        """The route of one operator's verb (a path of its own: no pattern that catches another's)."""

        def act(request: Request, body: ActBody, who: Caller = operator) -> dict[str, Any]:
            moved = ops.act(action, actor=who.name, reason=body.reason)
            _audit(request, who, f"rollout.{action}", moved, reason=body.reason)
            return moved

        act.__name__ = f"rollout_{action}"
        return act

    for action in ("pause", "resume", "rollback", "promote"):
        app.post(f"/v1/rollouts/{action}")(verb(action))

    @app.get("/operate", include_in_schema=False)
    def operate_page() -> Response:
        """The operator page: public code, no data (its calls carry the operator's own key)."""
        return page_file(pages.HERE, "operate.html", pages.FILES)

    @app.get("/pages/{name}", include_in_schema=False)
    def page_asset(name: Annotated[str, Path(max_length=64)]) -> Response:
        """A script or style of the operator page."""
        return page_file(pages.HERE, name, pages.FILES)

    @app.get("/v1/whoami")
    def whoami(who: Caller = requires(*ROLES)) -> dict[str, str]:
        """Who the credential names, and its role (the page greets and routes with it)."""
        return {"name": who.name, "role": who.role}

    @app.get("/v1/review/health")
    def review_health(_: Caller = operator) -> dict[str, Any]:
        """The review queue's figures: depth, throughput, the oldest waiting item, budget left."""
        return queue.stats()

    @app.get("/v1/review/quality")
    def review_quality(
        days: float = Query(30.0, gt=0, le=3650, description="Answers of the last this many days."),
        _: Caller = operator,
    ) -> dict[str, Any]:
        """Each reviewer's accuracy on gold items and each pair's agreement (Cohen's kappa) on the
        items both labeled."""
        return queue.reviewer_quality(since=utcnow() - timedelta(days=days))

    @app.get("/v1/review/budget")
    def review_budget(_: Caller = operator) -> dict[str, int]:
        """The review queue's labeling budgets in force (an operator's, else the settings')."""
        return _public(queue.budgets())

    @app.put("/v1/review/budget")
    def set_review_budget(request: Request, body: BudgetBody, who: Caller = operator) -> dict[str, int]:
        """Replace some of the budgets: every gateway replica's next claim follows; audited with the
        budgets before and after."""
        changes = {f"budget_{k}": v for k, v in body.model_dump(exclude_none=True).items()}
        return _replace(request, who, "budget", changes, body, queue.set_budgets, _public)

    @app.get("/v1/review/shares")
    def review_shares(_: Caller = operator) -> dict[str, float]:
        """The gold and overlap shares of the review queue in force (an operator's, else the settings')."""
        return _shown(queue.shares())

    @app.put("/v1/review/shares")
    def set_review_shares(request: Request, body: SharesBody, who: Caller = operator) -> dict[str, float]:
        """Replace the gold or overlap share: every gateway replica's next claim follows; audited
        with the shares before and after."""
        changes = {f"{k}_share": v for k, v in body.model_dump(exclude_none=True).items()}
        return _replace(request, who, "shares", changes, body, queue.set_shares, _shown)

    @app.get("/v1/keys")
    def list_keys(_: Caller = admin) -> list[dict[str, Any]]:
        """Every key, newest first, without its secret."""
        now = utcnow()
        return [_key(info, now) for info in ApiKeys(store).every()]

    @app.post("/v1/keys", status_code=201)
    def create_key(request: Request, body: KeyBody, who: Caller = admin) -> dict[str, Any]:
        """A new key: the response holds it this once (the store keeps only its hash)."""
        expires = timedelta(days=body.expires_days) if body.expires_days else None
        key, info = _admin(request, who).create_key(name=body.name, role=body.role, expires_in=expires)
        return {**_key(info, utcnow()), "key": key}

    @app.post("/v1/keys/revoke")
    def revoke_key(request: Request, body: RevokeBody, who: Caller = steward) -> dict[str, Any]:
        """Revoke a key at once (gateways stop taking it within seconds)."""
        return _key(_admin(request, who).revoke_key(body.name), utcnow())

    @app.get("/v1/labels/excluded")
    def excluded(_: Caller = steward) -> list[str]:
        """Everyone whose labels training snapshots leave out."""
        return store.excluded_actors()

    @app.post("/v1/labels/exclude")
    def exclude(request: Request, body: ExcludeBody, who: Caller = steward) -> dict[str, Any]:
        """Leave an actor's labels out of every training snapshot from now on."""
        new = _admin(request, who).exclude_labels(body.actor, reason=body.reason)
        return {"actor": body.actor, "excluded": True, "new": new}

    @app.post("/v1/labels/vouch")
    def vouch(request: Request, body: ExcludeBody, who: Caller = steward) -> dict[str, Any]:
        """Let a reviewer's labels train although their gold accuracy is under the label gate's bar."""
        new = _admin(request, who).vouch_labels(body.actor, reason=body.reason)
        return {"actor": body.actor, "vouched": True, "new": new}

    @app.get("/v1/audit")
    def audit_log(
        action: str | None = Query(None, max_length=64, description="e.g. key, rollout, rollout.promote"),
        limit: int = Query(200, ge=1, le=10_000),
        _: Caller = steward,
    ) -> list[dict[str, Any]]:
        """The audit log, newest first: read-only here (no route changes or removes an entry)."""
        return [
            {**dataclasses.asdict(e), "at": e.at.isoformat()} for e in audit.read(limit=limit, action=action)
        ]

    @app.get("/metrics", response_class=Response, responses=PROMETHEUS_TEXT)
    def metrics(_: Caller = operator) -> Response:
        latest = policy.latest if policy is not None else None
        return Response(rollout_metrics(ops.rollouts, counted, queue, latest), media_type=CONTENT_TYPE_LATEST)

    def _replace(
        request: Request,
        who: Caller,
        knobs: str,
        changes: dict[str, Any],
        body: BaseModel,
        put: Callable[..., tuple[dict[str, Any], dict[str, Any]]],
        shown: Callable[[Any], Any],
    ) -> Any:
        """Replace some of the queue's ``knobs`` (budget, shares) with ``put``, audited before and after."""
        if not changes:
            raise InvalidInput(f"name one to change: any of {sorted(type(body).model_fields)}")
        before, after = put(changes, by=who.name)
        detail = {"before": shown(before), "after": shown(after)}
        audit.record(
            actor=who, action=f"review.{knobs}", target="review queue", source=_source(request), detail=detail
        )
        return shown(after)

    def _admin(request: Request, who: Caller) -> Administration:
        return Administration(store, actor=who, source=_source(request))

    def _audit(request: Request, who: Caller, action: str, result: dict[str, Any], reason: str = "") -> None:
        """Each operator's act in the audit log too (the rollout's own trail has its figures)."""
        target = (
            f"rollout {result.get('rollout_id', '')} {result.get('candidate', result.get('champion', ''))}"
        )
        detail = {"reason": reason, "state": result.get("state")}
        audit.record(actor=who, action=action, target=target.strip(), source=_source(request), detail=detail)

    return app


def _public(budgets: dict[str, int]) -> dict[str, int]:
    """Budgets by the names the HTTP API uses (``per_hour``, not the setting's ``budget_per_hour``)."""
    return {name.removeprefix("budget_"): value for name, value in budgets.items()}


def _shown(shares: dict[str, float]) -> dict[str, float]:
    """Shares by the names the HTTP API uses (``gold``, not the setting's ``gold_share``)."""
    return {name.removesuffix("_share"): value for name, value in shares.items()}


def _source(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _key(info: KeyInfo, now: datetime) -> dict[str, Any]:
    """A key as listed: never its secret."""
    return {
        "name": info.name,
        "role": info.role,
        "state": info.state(now),
        "created_at": info.created_at.isoformat(),
        "created_by": info.created_by,
        "expires_at": info.expires_at.isoformat() if info.expires_at else None,
        "revoked_at": info.revoked_at.isoformat() if info.revoked_at else None,
    }


def rollout_metrics(
    rollouts: Rollouts,
    ticks: dict[str, int],
    queue: ReviewQueue | None = None,
    policy: dict[str, Any] | None = None,
) -> bytes:
    """The rollout's state, shares, failures and heartbeat age, every gate's last verdict, the
    transitions so far by state reached, this process's ticks, given the ``queue`` the reviewers'
    gold accuracy and agreement, and given the retraining ``policy``'s latest explanation its
    verdict and evidence, in Prometheus text format."""
    registry = CollectorRegistry()
    now = time.time()
    r = rollouts.live() or rollouts.latest()
    state = Gauge(
        "nicheloop_rollout_state", "1 for the state the newest rollout is in", ["state"], registry=registry
    )
    for name in STATES:
        state.labels(name).set(1.0 if (r.state if r else "none") == name else 0.0)
    share = Gauge("nicheloop_rollout_candidate_share", "Requests the candidate answers", registry=registry)
    mirror = Gauge("nicheloop_rollout_mirror_share", "Requests mirrored to the candidate", registry=registry)
    failures = Gauge(
        "nicheloop_rollout_failures", "Failed statistical checks of the rollout", registry=registry
    )
    age = Gauge(
        "nicheloop_rollout_heartbeat_age_seconds", "Since the controller last beat", registry=registry
    )
    verdict = Gauge(
        "nicheloop_rollout_gate_verdict",
        "1 for each gate's last verdict",
        ["gate", "verdict"],
        registry=registry,
    )
    if r is not None and r.id is not None:
        share.set(r.share)
        mirror.set(r.mirror)
        failures.set(r.failures)
        checks, _, heartbeat_at = rollouts.checks(r.id)
        age.set(now - heartbeat_at if r.live else 0.0)
        for check in checks if r.live else []:
            for v in ("pass", "fail", "hold"):
                verdict.labels(str(check.get("gate")), v).set(1.0 if check.get("verdict") == v else 0.0)
    moved = Counter(
        "nicheloop_rollout_transitions",
        "Stored rollout moves, by the state reached",
        ["to_state"],
        registry=registry,
    )
    for to_state, n in rollouts.transition_counts().items():
        moved.labels(to_state).inc(n)
    Counter("nicheloop_rollout_ticks", "Controller ticks run by this process", registry=registry).inc(
        ticks["ticks"]
    )
    Counter("nicheloop_rollout_tick_errors", "Ticks that failed (logged)", registry=registry).inc(
        ticks["errors"]
    )
    if queue is not None:
        review_metrics(registry, queue.reviewer_quality(since=utcnow() - timedelta(days=30)))
    if policy is not None:
        policy_metrics(registry, policy)
    return generate_latest(registry)


POLICY_GAUGES = {  # evidence figure -> (metric, help)
    "new_labels": ("nicheloop_policy_new_labels", "Labels not in the champion's snapshot"),
    "labels_after_alarm": (
        "nicheloop_policy_labels_after_alarm",
        "New labels of the alarm's traffic (since its window began)",
    ),
    "accuracy_drop_points": (
        "nicheloop_policy_accuracy_drop_points",
        "The champion's held-out accuracy minus its accuracy on users' labels, in points",
    ),
    "user_labels": ("nicheloop_policy_user_labels", "Users' labels of the champion's answers"),
    "world_labels": (
        "nicheloop_policy_world_labels",
        "Labels of the new world the champion was trained for, in its snapshot",
    ),
    "world_new_labels": (
        "nicheloop_policy_world_new_labels",
        "New labels of the world the champion was trained for (the recovery rule's count)",
    ),
}


POLICY_CLASS_GAUGES = {  # evidence figure per class -> (metric, help)
    "new_by_class": (
        "nicheloop_policy_new_labels_by_class",
        "Labels not in the champion's snapshot, per class",
    ),
    "after_alarm_by_class": (
        "nicheloop_policy_labels_after_alarm_by_class",
        "New labels of the alarm's traffic, per class",
    ),
}

POLICY_AGE_GAUGES = {  # evidence moment -> (metric, help): seconds since it, at the evidence's now
    "alarm_since": ("nicheloop_policy_alarm_age_seconds", "How long the oldest drift alarm has held"),
    "world_since": (
        "nicheloop_policy_world_age_seconds",
        "How long ago the new world the champion was trained for began",
    ),
}


def policy_metrics(registry: CollectorRegistry, explained: dict[str, Any]) -> None:
    """The retraining policy's verdict (1 for the action and rule of its last look), the age of the
    alarm it weighs and the figures it counts (:func:`rollout.retrain.explain`)."""
    d, ev = explained["decision"], explained["evidence"]
    Gauge(
        "nicheloop_policy_decision",
        "1 for the policy's latest verdict",
        ["action", "rule"],
        registry=registry,
    ).labels(d["action"], d["rule"]).set(1.0)
    for key, (name, doc) in POLICY_GAUGES.items():
        if ev.get(key) is not None:
            Gauge(name, doc, registry=registry).set(float(ev[key]))
    for key, (name, doc) in POLICY_CLASS_GAUGES.items():
        gauge = Gauge(name, doc, ["class"], registry=registry)
        for cls, n in (ev.get(key) or {}).items():
            gauge.labels(cls).set(float(n))
    for key, (name, doc) in POLICY_AGE_GAUGES.items():
        if ev.get(key) is not None:
            Gauge(name, doc, registry=registry).set(max(0.0, ev["now"] - ev[key]))


def review_metrics(registry: CollectorRegistry, quality: dict[str, Any]) -> None:
    """Reviewers' gold accuracy and answers, and each pair's kappa and shared items, over the last
    30 days (:meth:`nicheloop.review.ReviewQueue.reviewer_quality`)."""
    who, pair = ["reviewer"], ["reviewer_a", "reviewer_b"]
    accuracy = Gauge(
        "nicheloop_review_gold_accuracy", "A reviewer's accuracy on gold items", who, registry=registry
    )
    answered = Gauge(
        "nicheloop_review_gold_answered", "Gold items a reviewer answered", who, registry=registry
    )
    for g in quality["gold"]:
        accuracy.labels(g["reviewer"]).set(g["accuracy"])
        answered.labels(g["reviewer"]).set(g["answered"])
    kappa = Gauge(
        "nicheloop_review_kappa",
        "Cohen's kappa of two reviewers on the items both labeled",
        pair,
        registry=registry,
    )
    shared = Gauge(
        "nicheloop_review_shared_items", "Items two reviewers both labeled", pair, registry=registry
    )
    for p in quality["pairs"]:
        shared.labels(*p["reviewers"]).set(p["items"])
        if p["kappa"] is not None:
            kappa.labels(*p["reviewers"]).set(p["kappa"])


def run_controller(settings: Settings, stop: threading.Event | None = None) -> None:
    """Tick until SIGTERM/SIGINT (or ``stop``), serving HTTP on ``settings.controller_port``."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    rollouts = Rollouts(Store(settings.db_url))
    registry = Registry(settings.tracking_uri, settings.model_name)
    try:
        ensure_topics(settings.bootstrap_servers)
    except Exception as exc:  # noqa: BLE001  the trail waits in the store until Kafka is back
        log.warning("rollout topic not ensured (%s); announcing once the broker is reachable", exc)
    publisher = Publisher(
        settings.bootstrap_servers,
        settings.home / "spool",
        name="controller",
        spool_max_events=settings.spool_max_events,
        report=SpoolReports(rollouts.store).reporter("controller"),
    )
    holder = f"{socket.gethostname()}:{os.getpid()}"
    runs = PolicyRuns(
        Operations(rollouts, registry),
        command=[sys.executable, "-m", "cli", "train"]
        + (["--recipe", str(settings.retrain_recipe)] if settings.retrain_recipe else []),
        log_dir=settings.home.resolve() / "logs",
        plan=load_plan(settings.policy_rollout_plan),
        env=child_env(settings),
        audit=Audit(rollouts.store),
    )
    stopgaps = PolicyRuns(
        Operations(rollouts, registry),
        command=[sys.executable, "-m", "cli", "stopgap"],
        log_dir=settings.home.resolve() / "logs",
        plan=load_plan(settings.stopgap_rollout_plan)
        if settings.stopgap_rollout_plan
        else RolloutPlan(**STOPGAP_PLAN),
        env=child_env(settings),
        audit=Audit(rollouts.store),
    )
    policy = PolicyLoop(
        PolicyEvidence(rollouts.store, registry),
        load_policy(settings.retrain_policy),
        holder=holder,
        model_name=settings.model_name,
        announce=lambda e: publisher.publish_durable(DECISIONS_TOPIC, e.champion, e),
        audit=Audit(rollouts.store),
        every_s=settings.policy_every_s,
        runs=runs,
        stopgaps=stopgaps,
        policy_file=settings.retrain_policy,
    )
    controller = Controller(
        rollouts,
        registry,
        StoreEvidence(rollouts),
        holder=holder,
        announce=kafka_announce(publisher, settings.model_name),
        audit=Audit(rollouts.store),
        idle_s=settings.controller_idle_s,
    )
    ticks = {"ticks": 0, "errors": 0}
    unable = ""  # why the policy could not look last time
    server = uvicorn.Server(
        uvicorn.Config(
            controller_api(
                Operations(rollouts, registry),
                ticks,
                gate=gatekeeper_for(rollouts.store, settings),
                review=QueuePolicy.from_settings(settings),
                blobs=BlobStore(str(settings.blob_dir)),
                reports=settings.drift_report_dir,
                policy=policy,
            ),
            host=settings.host,
            port=settings.controller_port,
            log_level="warning",
        )
    )
    web = threading.Thread(target=server.run, name="controller-http", daemon=True)
    web.start()
    log.info("rollout controller %s; operators' HTTP on :%d", holder, settings.controller_port)
    try:
        while not stop.is_set():
            ticks["ticks"] += 1
            try:
                controller.tick(time.time())
            except Exception:
                ticks["errors"] += 1
                log.exception("rollout controller tick failed")
            try:
                policy.step(time.time())
                unable = ""
            except NicheloopError as exc:  # no champion yet, say: the next look retries
                if str(exc) != unable:  # once, not at every look
                    log.warning("the retraining policy could not look: %s", exc)
                unable = str(exc)
            except Exception:
                log.exception("the retraining policy's look failed; the next look retries")
            stop.wait(_interval(rollouts, settings.controller_idle_s))
    finally:
        runs.stop()
        stopgaps.stop()
        rollouts.release(holder)
        server.should_exit = True
        web.join(timeout=5)
        publisher.close()


def _interval(rollouts: Rollouts, idle_s: float) -> float:
    """The live rollout's plan interval; ``idle_s`` while none is live (or the store is away)."""
    try:
        live = rollouts.live()
        return RolloutPlan(**rollouts.plan(live.id)).interval_s if live is not None and live.id else idle_s
    except Exception:  # noqa: BLE001
        return idle_s
