"""The HTTP API: /v1/predict, /v1/feedback, /v1/review, images, health, readiness and metrics.

Routes are thin: they parse, call one function with the injected :data:`~services.deps.Resources`,
and shape the answer. Domain errors become 4xx/503 answers (:mod:`services.http`).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from nicheloop.contracts import FeedbackAccepted, FeedbackEvent, FeedbackRequest, PredictResponse
from nicheloop.errors import NotFound, NotReady
from nicheloop.http import IMAGE_BYTES, PROBLEMS, PROMETHEUS_TEXT, ImageSha, RowId, requires
from nicheloop.keys import ROLES, Caller
from nicheloop.pages import page_file
from nicheloop.review import (
    LeaseRenewed,
    ReviewLabel,
    ReviewLease,
    ReviewSkip,
    ReviewStats,
    ReviewTask,
    Whoami,
)
from services import pages
from services.deps import GatewayResources, Resources
from services.explain import explain
from services.feedback import record_feedback, submit_review
from services.http import AdmitAtTheDoor, image_bytes, install_guards
from services.predict import predict_image

api = FastAPI(title="nicheloop", version="0.1.0", responses=PROBLEMS)
install_guards(api, streamed={"/v1/predict"})  # the upload route bounds its own body
api.add_middleware(AdmitAtTheDoor, paths=frozenset({"/v1/predict"}))  # outermost: refusals cost least


@api.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@api.get("/readyz")
async def readyz(res: Resources) -> JSONResponse:
    """200 once a model serves, 503 until then or when the predictor stops answering; it never
    waits behind predictions (what the gateway knows of the model, :mod:`services.watch`)."""
    try:
        state = await res.model.served()
    except NotReady as exc:
        return JSONResponse(
            status_code=503, content={"ready": False, "model_version": None, "detail": str(exc)}
        )
    return JSONResponse(status_code=200, content={"ready": True, "model_version": state.model_version})


@api.get("/metrics", response_class=Response, responses=PROMETHEUS_TEXT)
async def metrics(res: Resources, _: Caller = requires("operator")) -> Response:
    """This replica's event-spool, load-shedding and model-call metrics (by arm and version) in
    Prometheus text format."""
    registry = CollectorRegistry()
    Gauge(
        "nicheloop_event_spool_depth", "Events waiting on local disk for the broker", registry=registry
    ).set(res.publisher.spool_depth)
    Gauge(
        "nicheloop_event_spool_capacity", "The spool's bound (NICHELOOP_SPOOL_MAX_EVENTS)", registry=registry
    ).set(res.publisher.spool_capacity)
    Gauge(
        "nicheloop_predictions_in_flight", "Predictions this gateway replica works on now", registry=registry
    ).set(res.admission.inside)
    Gauge(
        "nicheloop_predictions_in_flight_limit", "NICHELOOP_MAX_INFLIGHT_PREDICTIONS", registry=registry
    ).set(res.admission.limit)
    Counter(
        "nicheloop_predictions_shed",
        "Predictions refused with 503 because the replica was full",
        registry=registry,
    ).inc(res.admission.shed)
    Counter(
        "nicheloop_caller_rate_refused",
        "Predictions and labels refused with 429: their credential called faster than its rate",
        registry=registry,
    ).inc(res.rates.refused)
    if res.rollout is not None:
        Counter(
            "nicheloop_shadow_calls_dropped",
            "Shadow calls to a rollout's candidate not made: at the bound, or the replica was busy",
            registry=registry,
        ).inc(res.rollout.counter.dropped)
    body = generate_latest(registry) + generate_latest(res.calls.registry)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)


@api.post("/v1/predict", response_model=PredictResponse)
async def predict(
    request: Request, response: Response, res: Resources, app: Caller = requires("app")
) -> PredictResponse:
    """Classify one image; the prediction is published as an event and the image kept by its hash.

    Over ``max_inflight_predictions`` at once, answered 503 with ``Retry-After`` before the route
    runs (:class:`services.http.AdmitAtTheDoor`). ``Server-Timing`` says where the time went
    (prepare, model, publish; of model, predictor and forward; milliseconds).
    """
    res.rates.take(app.name, "predictions")
    data = await image_bytes(request, res.settings.max_upload_bytes)
    timings: dict[str, float] = {}
    key = request.headers.get("x-request-key")
    answer = await predict_image(res, data, timings, key=key, owner=app.name)
    response.headers["Server-Timing"] = ", ".join(f"{k};dur={v:.1f}" for k, v in timings.items())
    return answer


def _accepted(event: FeedbackEvent) -> FeedbackAccepted:
    return FeedbackAccepted(
        feedback_id=event.feedback_id,
        prediction_id=event.prediction_id,
        label=event.label,
        source=event.source,
    )


@api.post("/v1/feedback", status_code=202, response_model=FeedbackAccepted)
async def feedback(body: FeedbackRequest, res: Resources, app: Caller = requires("app")) -> FeedbackAccepted:
    """A label for a prediction; answered once it is durable (on Kafka or in the spool)."""
    res.rates.take(app.name, "feedback")
    classes = await _class_names(res)
    event = await asyncio.to_thread(
        record_feedback,
        res.publisher,
        res.key,
        body.prediction_id,
        body.label,
        classes,
        body.source,
        app.name,
        owner=app.name,
    )
    return _accepted(event)


@api.get(
    "/v1/review/next",
    response_model=ReviewTask,
    responses={204: {"description": "queue empty"}, 429: {"description": "budget spent"}},
)
async def review_next(res: Resources, reviewer: Caller = requires("reviewer")) -> Any:
    """Lease the next task to the calling reviewer (label or skip it with its token)."""
    task = await asyncio.to_thread(res.queue.claim_task, reviewer.name)
    return task if task is not None else Response(status_code=204)


@api.get("/v1/review/stats", response_model=ReviewStats)
async def review_stats(res: Resources, _: Caller = requires("reviewer", "operator")) -> ReviewStats:
    return ReviewStats.model_validate(await asyncio.to_thread(res.queue.stats))


@api.post("/v1/review/{task_id:int}", status_code=202, response_model=FeedbackAccepted)
async def review_submit(
    task_id: RowId, body: ReviewLabel, res: Resources, reviewer: Caller = requires("reviewer")
) -> FeedbackAccepted:
    """A reviewer's label for a leased task; it becomes feedback with ``source=reviewer`` and the
    reviewer as its actor."""
    classes = await _class_names(res)
    event = await asyncio.to_thread(
        submit_review,
        res.queue,
        res.publisher,
        res.key,
        task_id,
        body.label,
        body.lease_token,
        classes,
        reviewer.name,
    )
    return _accepted(event)


@api.post("/v1/review/{task_id:int}/skip", status_code=200)
async def review_skip(
    task_id: RowId, body: ReviewSkip, res: Resources, _: Caller = requires("reviewer")
) -> dict[str, Any]:
    """Give a leased task back unlabeled, with a reason; it is not offered to the same reviewer again."""
    item = await asyncio.to_thread(res.queue.skip, task_id, body.lease_token, reason=body.reason)
    return {"task_id": item.task_id, "status": item.status, "skips": item.skips}


@api.post("/v1/review/{task_id:int}/renew", response_model=LeaseRenewed)
async def review_renew(
    task_id: RowId, body: ReviewLease, res: Resources, _: Caller = requires("reviewer")
) -> LeaseRenewed:
    """Extend a held lease (a reviewer still at work keeps the tasks leased ahead)."""
    item = await asyncio.to_thread(res.queue.renew, task_id, body.lease_token)
    assert item.lease_expires_at is not None
    return LeaseRenewed(task_id=item.task_id, lease_expires_at=item.lease_expires_at)


@api.post("/v1/review/{task_id:int}/release", response_model=LeaseRenewed)
async def review_release(
    task_id: RowId, body: ReviewLease, res: Resources, _: Caller = requires("reviewer")
) -> LeaseRenewed:
    """End the lease of a task labeled under it: no more corrections, and an overlap item goes on
    to its second reviewer at once (the page does this when a decision leaves its undo reach)."""
    item = await asyncio.to_thread(res.queue.release, task_id, body.lease_token)
    assert item.lease_expires_at is not None
    return LeaseRenewed(task_id=item.task_id, lease_expires_at=item.lease_expires_at)


@api.get("/v1/whoami", response_model=Whoami)
async def whoami(who: Caller = requires(*ROLES)) -> Whoami:
    """Who the credential names, and its role (the pages greet and route with it)."""
    return Whoami(name=who.name, role=who.role)


@api.get("/review", include_in_schema=False)
async def review_page() -> Response:
    """The reviewer page: public code, no data (its calls carry the reviewer's own key)."""
    return _page("review.html")


@api.get("/pages/{name}", include_in_schema=False)
async def page_asset(name: Annotated[str, Path(max_length=64)]) -> Response:
    """A script or style of the pages."""
    return _page(name)


def _page(name: str) -> Response:
    return page_file(pages.HERE, name, pages.FILES)


@api.get("/v1/images/{sha256}", response_class=Response, responses=IMAGE_BYTES)
async def image(sha256: ImageSha, res: Resources, who: Caller = requires("reviewer", "operator")) -> Response:
    """A stored image: any for an operator, those of their own tasks for a reviewer."""
    await _visible(res, who, sha256)
    data = await asyncio.to_thread(res.blobs.get, sha256)
    return Response(content=data, media_type="application/octet-stream")


@api.get(
    "/v1/images/{sha256}/saliency",
    response_class=Response,
    responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def saliency(
    sha256: ImageSha, res: Resources, who: Caller = requires("reviewer", "operator")
) -> Response:
    """Where the served version looked: the image as the model saw it with its Grad-CAM for the
    class it picks laid over (red to yellow: the strongest evidence); cached per version. A
    reviewer gets those of their own tasks' images, an operator any."""
    await _visible(res, who, sha256)
    out = await explain(res, sha256)
    headers = {"X-Model-Version": out.model_version, "X-Saliency-Class": out.class_name}
    return Response(content=out.png, media_type="image/png", headers=headers)


async def _visible(res: GatewayResources, who: Caller, sha256: str) -> None:
    """Raises NotFound unless ``who`` may see image ``sha256``: an operator any, a reviewer those of
    their own tasks (and their look-alikes)."""
    if who.role == "reviewer" and not await asyncio.to_thread(res.queue.shows, who.name, sha256):
        raise NotFound(f"no task of yours shows image {sha256}; claim one with GET /v1/review/next")


async def _class_names(res: GatewayResources) -> list[str]:
    return list((await res.model.served()).class_names)
