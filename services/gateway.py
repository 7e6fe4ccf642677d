"""The HTTP ingress on Ray Serve: one replica of :data:`services.api.api` with its resources."""

from __future__ import annotations

import logging
from typing import Any, Literal

from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

from nicheloop.blobs import BlobStore
from nicheloop.bus import Publisher
from nicheloop.errors import NicheloopError, NotReady, Overloaded
from nicheloop.http import gatekeeper_for, install_gatekeeper
from nicheloop.logs import configure_logging
from nicheloop.review import QueuePolicy, ReviewQueue
from nicheloop.rollouts import Rollouts
from nicheloop.settings import Settings, shareable
from nicheloop.spools import SpoolReports
from nicheloop.store import Store
from services.api import api
from services.batching import Batcher
from services.deps import GatewayResources, PredictorPort, install_resources
from services.ids import load_or_create_key
from services.inference import InProcessPredictor, InProcessShadow, ModelOutput, ModelState, Pixels, Saliency
from services.limits import Admission, CallerRates
from services.routing import RoutingWatch
from services.watch import ModelWatch

log = logging.getLogger(__name__)

STATE_TIMEOUT_S = 2.0  # /readyz waits at most this for the predictor, then answers from what it knows
RETRY_AFTER_S = 1.0  # what a shed request is told to wait
PREDICT_ATTEMPTS = 2  # a replica that dies mid-request costs one retry on another, not an error
CALLS_PER_REPLICA = 2  # the next call waits at the replica while one runs: its model never idles for a hop


class ServePredictor:
    """The predictor deployment behind a Serve handle, as :class:`services.deps.PredictorPort`.

    Images that arrive while this replica's calls are out travel together in the next call: a Ray
    call costs both sides milliseconds of CPU whatever it carries (docs/serving.md).
    """

    def __init__(
        self, handle: DeploymentHandle, *, max_batch: int, calls_at_once: int, method: str = "predict_many"
    ) -> None:
        self.handle, self.method = handle, method  # method: predict_many, or shadow_many for mirrors
        self._calls: Batcher[Pixels, ModelOutput] = Batcher(
            self._call, max_size=max_batch, max_wait_s=0.0, concurrency=calls_at_once
        )

    async def state(self) -> ModelState:
        return await _answer(self.handle.state.remote())

    async def predict(self, pixels: Pixels) -> ModelOutput:
        """Raises Overloaded when the predictors' queue is full, NotReady when replicas keep dying."""
        return await self._calls.submit(pixels)

    async def saliency(self, pixels: Pixels) -> Saliency:
        """Grad-CAM of one image by a predictor replica (one call each: a reviewer asks for one)."""
        saliency: Saliency = await _answer(self.handle.saliency.remote(pixels))
        return saliency

    async def _call(self, items: list[Pixels]) -> list[ModelOutput]:
        for attempt in range(1, PREDICT_ATTEMPTS + 1):
            try:
                outputs: list[ModelOutput] = await _answer(getattr(self.handle, self.method).remote(items))
                return outputs
            except RayActorError as exc:  # inference is idempotent: try another replica
                if attempt == PREDICT_ATTEMPTS:
                    raise NotReady(f"predictor replicas failed {attempt} times ({exc}); retry later") from exc
                log.warning("predictor replica lost mid-request (%s); retrying", exc)
            except NotReady as exc:  # a replica with no model yet (a replacement loading): another may have
                if isinstance(exc, Overloaded) or attempt == PREDICT_ATTEMPTS:
                    raise
                log.warning("a predictor replica is not ready (%s); retrying", exc)
        raise AssertionError("unreachable")


async def _answer(response: DeploymentResponse | DeploymentResponseGenerator) -> Any:
    """Await a Serve call; cancelled with its caller (a timeout), so no replica works on for nobody."""
    if not isinstance(response, DeploymentResponse):
        raise TypeError("the predictor's methods answer once; they do not stream")
    try:
        return await response
    except BackPressureError as exc:
        raise Overloaded(
            f"the predictors' queue is full ({exc}); retry later", retry_after_s=RETRY_AFTER_S
        ) from exc
    except RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, NicheloopError):  # the replica's own words for the caller, not its traceback
            raise cause from None
        raise
    except BaseException:
        response.cancel()
        raise


def _port(
    settings: Settings, handle: DeploymentHandle | None, arm: Literal["champion", "candidate"], replicas: int
) -> PredictorPort:
    if handle is None:
        return InProcessPredictor(shareable(settings), arm)
    return ServePredictor(
        handle, max_batch=settings.batch_max_size, calls_at_once=CALLS_PER_REPLICA * replicas
    )


def _shadow_port(
    settings: Settings, handle: DeploymentHandle | None, candidate: PredictorPort
) -> PredictorPort:
    """The candidate as shadow calls reach it (:meth:`services.inference.Predictor.shadow`)."""
    if handle is None:
        assert isinstance(candidate, InProcessPredictor)
        return InProcessShadow(candidate)
    return ServePredictor(
        handle, max_batch=settings.batch_max_size, calls_at_once=CALLS_PER_REPLICA, method="shadow_many"
    )


def gateway_resources(
    settings: Settings, predictor: DeploymentHandle | None, candidate: DeploymentHandle | None = None
) -> GatewayResources:
    """Open what a gateway replica holds: the champion's and the candidate's predictors (handles, or
    in this process when there are none), the routing, the key, the blob store, the SQL store, the
    queue, the publisher."""
    store = Store(settings.db_url)
    port = _port(settings, predictor, "champion", settings.predictor_max_replicas)
    candidate_port = _port(settings, candidate, "candidate", 1)
    return GatewayResources(
        settings=settings,
        predictor=port,
        model=ModelWatch(
            port,
            fresh_s=settings.reload_interval_s,
            timeout_s=STATE_TIMEOUT_S,
            stale_s=max(30.0, 3 * settings.predict_timeout_s),
        ),
        admission=Admission(settings.max_inflight_predictions, retry_after_s=RETRY_AFTER_S),
        rates=CallerRates(settings.caller_rate_per_s, settings.caller_burst),
        key=load_or_create_key(
            settings.home,
            settings.secret_key.get_secret_value() if settings.secret_key else None,
            file=settings.secret_key_file,
        ),
        blobs=BlobStore(str(settings.blob_dir)),
        store=store,
        queue=ReviewQueue(store, QueuePolicy.from_settings(settings)),
        publisher=Publisher(
            settings.bootstrap_servers,
            settings.home / "spool",
            name="gateway",
            spool_max_events=settings.spool_max_events,
            report=SpoolReports(store).reporter("gateway"),
        ),
        candidate=candidate_port,
        shadow=_shadow_port(settings, candidate, candidate_port),
        rollout=RoutingWatch(
            Rollouts(store), refresh_s=settings.rollout_refresh_s, stale_s=settings.rollout_stale_s
        ),
    )


@serve.ingress(api)
class Gateway:
    def __init__(
        self,
        predictor: DeploymentHandle | None,
        settings: dict[str, Any],
        candidate: DeploymentHandle | None = None,
    ) -> None:
        configure_logging()
        resources = gateway_resources(Settings(**settings), predictor, candidate)
        install_resources(resources)
        install_gatekeeper(gatekeeper_for(resources.store, resources.settings))  # who may call which route


def gateway_deployment(settings: Settings) -> Any:
    """The ingress as a Serve deployment. Beyond ``gateway_max_queued`` requests waiting for a
    replica, the proxy answers 503 with ``Retry-After`` itself: shedding there costs a fraction of
    what a request that reaches the gateway does (docs/serving.md)."""
    return serve.deployment(
        Gateway,
        name="gateway",
        num_replicas=settings.gateway_replicas,
        # fused: the champion's model and, during a rollout, the candidate's run in this replica
        ray_actor_options={"num_cpus": 0.5 + (settings.predictor_threads if settings.fused else 0)},
        max_ongoing_requests=settings.gateway_max_ongoing,
        max_queued_requests=settings.gateway_max_queued,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
    )
