"""The HTTP ingress on Ray Serve: /v1/predict, /v1/feedback, /v1/review, health and readiness."""

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from ray import serve
from ray.serve.handle import DeploymentHandle

from nicheloop.blobs import BlobStore
from nicheloop.bus import Publisher
from nicheloop.contracts import (
    PREDICTIONS_TOPIC,
    FeedbackAccepted,
    FeedbackRequest,
    PredictionEvent,
    PredictResponse,
    ReviewLabel,
    ReviewSkip,
    ReviewStats,
    ReviewTask,
)
from nicheloop.errors import NotReady
from nicheloop.images import decode_image, image_statistics
from nicheloop.logs import configure_logging
from nicheloop.review_queue import QueuePolicy, ReviewQueue
from nicheloop.settings import Settings
from nicheloop.store import Store
from services.feedback import record_feedback
from services.http import image_bytes, install_error_handlers
from services.ids import load_or_create_key, new_prediction_id
from services.review import claim_next, submit_review

log = logging.getLogger(__name__)

api = FastAPI(title="nicheloop", version="0.1.0")
install_error_handlers(api)


@serve.deployment(name="gateway", ray_actor_options={"num_cpus": 0.5})
@serve.ingress(api)
class Gateway:
    def __init__(self, predictor: DeploymentHandle, settings: dict[str, Any]) -> None:
        configure_logging()
        self.settings = Settings(**settings)
        self.predictor = predictor
        self.key = load_or_create_key(self.settings.home, self.settings.secret_key)
        self.blobs = BlobStore(str(self.settings.blob_dir))
        self.store = Store(self.settings.db_url)
        self.queue = ReviewQueue(self.store, QueuePolicy.from_settings(self.settings))
        self.publisher = Publisher(
            self.settings.bootstrap_servers,
            self.settings.home / "spool",
            name="gateway",
            spool_max_events=self.settings.spool_max_events,
        )

    @api.get("/metrics")
    async def metrics(self) -> Response:
        """This replica's event-spool metrics in Prometheus text format."""
        registry = CollectorRegistry()
        Gauge(
            "nicheloop_event_spool_depth", "Events waiting on local disk for the broker", registry=registry
        ).set(self.publisher.spool_depth)
        Gauge(
            "nicheloop_event_spool_capacity",
            "The spool's bound (NICHELOOP_SPOOL_MAX_EVENTS)",
            registry=registry,
        ).set(self.publisher.spool_capacity)
        return Response(content=generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        state = await self.predictor.ready.remote()
        return JSONResponse(status_code=200 if state["ready"] else 503, content=state)

    @api.post("/v1/predict", response_model=PredictResponse)
    async def predict(self, request: Request) -> PredictResponse:
        s = self.settings
        data = await image_bytes(request, s.max_upload_bytes)
        image = decode_image(data, s.max_upload_bytes, s.max_image_pixels)
        digest = await asyncio.to_thread(self.blobs.put, data)
        out = await self.predictor.predict.remote(image)
        prediction_id = new_prediction_id(self.key)
        best = max(range(len(out.probs)), key=out.probs.__getitem__)
        event = PredictionEvent(
            prediction_id=prediction_id,
            model_name=s.model_name,
            model_version=out.model_version,
            label=out.class_names[best],
            probs=out.probs,
            class_names=out.class_names,
            uncertainty=out.uncertainty,
            embedding=out.embedding,
            image_sha256=digest,
            image_stats=await asyncio.to_thread(image_statistics, image),
        )
        if s.event_logging:
            self.publisher.publish(PREDICTIONS_TOPIC, prediction_id, event)
        return PredictResponse(
            prediction_id=prediction_id,
            model_version=out.model_version,
            label=event.label,
            probs=dict(zip(out.class_names, out.probs)),
            uncertainty=out.uncertainty,
        )

    @api.post("/v1/feedback", status_code=202, response_model=FeedbackAccepted)
    async def feedback(self, body: FeedbackRequest) -> FeedbackAccepted:
        classes = await self._class_names()
        ev = await asyncio.to_thread(
            record_feedback, self.publisher, self.key, body.prediction_id, body.label, classes, body.source
        )
        return FeedbackAccepted(
            feedback_id=ev.feedback_id, prediction_id=ev.prediction_id, label=ev.label, source=ev.source
        )

    @api.get(
        "/v1/review/next",
        response_model=ReviewTask,
        responses={204: {"description": "queue empty"}, 429: {"description": "budget spent"}},
    )
    async def review_next(self, x_reviewer: str = Header("anonymous", max_length=128)) -> Any:
        """Lease the next task to the reviewer named in ``X-Reviewer`` (label or skip it with its token)."""
        task = await asyncio.to_thread(claim_next, self.queue, self.store, x_reviewer)
        return task if task is not None else Response(status_code=204)

    @api.get("/v1/review/stats", response_model=ReviewStats)
    async def review_stats(self) -> ReviewStats:
        return ReviewStats.model_validate(await asyncio.to_thread(self.queue.stats))

    @api.post("/v1/review/{task_id}", status_code=202, response_model=FeedbackAccepted)
    async def review_submit(self, task_id: int, body: ReviewLabel) -> FeedbackAccepted:
        classes = await self._class_names()
        ev = await asyncio.to_thread(
            submit_review,
            self.queue,
            self.publisher,
            self.key,
            task_id,
            body.label,
            body.lease_token,
            classes,
        )
        return FeedbackAccepted(
            feedback_id=ev.feedback_id, prediction_id=ev.prediction_id, label=ev.label, source=ev.source
        )

    @api.post("/v1/review/{task_id}/skip", status_code=200)
    async def review_skip(self, task_id: int, body: ReviewSkip) -> dict[str, Any]:
        """Give a leased task back unlabeled; it is not offered to the same reviewer again."""
        item = await asyncio.to_thread(self.queue.skip, task_id, body.lease_token)
        return {"task_id": item.task_id, "status": item.status, "skips": item.skips}

    @api.get("/v1/images/{sha256}")
    async def image(self, sha256: str) -> Response:
        data = await asyncio.to_thread(self.blobs.get, sha256)
        return Response(content=data, media_type="application/octet-stream")

    async def _class_names(self) -> list[str]:
        state = await self.predictor.ready.remote()
        if not state["ready"]:
            raise NotReady("no model loaded yet; register a champion with `nicheloop bootstrap`")
        return await self.predictor.class_names.remote()
