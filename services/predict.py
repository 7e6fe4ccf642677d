"""A prediction on the gateway: the upload made ready in one worker thread (decode, orientation,
drift statistics, the model's input geometry), then the predictor and the blob store at once, then
the event handed to the publisher; none of it on the event loop, each wait bounded."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass

from nicheloop.contracts import PREDICTIONS_TOPIC, Arm, PredictionEvent, PredictResponse
from nicheloop.errors import ModelFailed, NicheloopError, NotReady, Overloaded, UpstreamTimeout
from nicheloop.images import decode_image, image_statistics
from nicheloop.pixels import InputSpec, to_pixels
from nicheloop.rollouts import NO_ROLLOUT, Routing
from services.deps import GatewayResources, PredictorPort
from services.ids import new_prediction_id
from services.inference import ModelOutput, Pixels
from services.limits import within
from services.routing import Route, route

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upload:
    pixels: Pixels
    stats: dict[str, float]
    sha256: str  # routes the request when the caller gives no key


def prepare(data: bytes, spec: InputSpec, *, max_bytes: int, max_pixels: int) -> Upload:
    """Decode ``data`` once; measure it for drift and bring it to the model's input geometry.

    Raises:
        InvalidInput, PayloadTooLarge: as :func:`nicheloop.images.decode_image`.
    """
    image = decode_image(data, max_bytes, max_pixels)
    return Upload(
        Pixels(to_pixels(image, spec), spec.key), image_statistics(image), hashlib.sha256(data).hexdigest()
    )


async def predict_image(
    res: GatewayResources, data: bytes, timings: dict[str, float], *, key: str | None = None, owner: str = ""
) -> PredictResponse:
    """Classify the image file ``data`` for the caller named ``owner`` (whose id it gets, for its
    feedback); store the image by its hash and publish the prediction event.

    During a rollout, ``key`` (else the image's hash) decides whether the candidate answers, and
    whether it also sees the image in shadow (:mod:`services.routing`). ``timings`` gets the
    milliseconds of each step (``prepare``, ``model``, ``publish``; and of ``model``, the part spent
    in the predictor replica and in its batch's forward pass, ``predictor`` and ``forward``), for
    ``Server-Timing``.

    Raises:
        NotReady: no model serves. Overloaded: the predictor's queue is full.
        UpstreamTimeout: the predictor, blob store or spool did not answer in time.
        InvalidInput, PayloadTooLarge: not an acceptable image.
    """
    s = res.settings
    state = await res.model.served()
    routing = None if res.rollout is None else await res.rollout.current()
    mark = time.perf_counter()
    upload = await asyncio.to_thread(
        prepare, data, state.spec(), max_bytes=s.max_upload_bytes, max_pixels=s.max_image_pixels
    )
    mark = _lap(timings, "prepare", mark)
    way = (
        Route("champion")
        if routing is None
        else route(
            key or upload.sha256, rollout_id=routing.rollout_id, share=routing.share, mirror=routing.mirror
        )
    )
    (out, arm), digest = await asyncio.gather(
        _answer(res, upload.pixels, way.answer, routing, champion=state.model_version or "unknown"),
        within(
            asyncio.to_thread(res.blobs.put, data),
            s.storage_timeout_s,
            part="blob store",
            knob="storage_timeout_s",
        ),
    )
    mark = _lap(timings, "model", mark)
    for step, ms in (("predictor", out.predictor_ms), ("forward", out.forward_ms)):
        if ms is not None:  # the replica's share of "model": the rest is the hop to it and back
            timings[step] = ms
    if arm == "champion":
        res.model.seen(out.model_version)
    prediction_id = new_prediction_id(res.key, owner=owner)
    event = _event(res, prediction_id, out, digest, upload.stats, arm=arm)
    if s.event_logging:
        await _publish(res, event)
        _lap(timings, "publish", mark)
    if way.mirror and routing is not None:
        _mirror(res, upload, digest, routing, twin=prediction_id)
    return PredictResponse(
        prediction_id=prediction_id,
        model_version=out.model_version,
        label=event.label,
        probs=dict(zip(out.class_names, out.probs)),
        uncertainty=out.uncertainty,
    )


async def _answer(
    res: GatewayResources, pixels: Pixels, arm: Arm, routing: Routing | None, *, champion: str
) -> tuple[ModelOutput, Arm]:
    """The model output from ``arm``; a candidate that fails is counted and the champion (version
    ``champion`` as last served) answers."""
    if arm == "candidate" and routing is not None and res.candidate is not None:
        try:
            out = await _timed(
                res,
                res.candidate,
                pixels,
                "candidate",
                rollout_id=routing.rollout_id,
                version=routing.candidate,
            )
            return out, "candidate"
        except (NicheloopError, TimeoutError) as exc:
            log.warning("the candidate failed a request (%s); the champion answers it", exc)
    rollout_id = None if routing is None else routing.rollout_id
    out = await _timed(res, res.predictor, pixels, "champion", rollout_id=rollout_id, version=champion)
    return out, "champion"


async def _timed(
    res: GatewayResources,
    port: PredictorPort,
    pixels: Pixels,
    arm: Arm,
    *,
    rollout_id: int | None,
    version: str,
) -> ModelOutput:
    """One model call with the predictor's deadline, counted for ``arm`` of the rollout (if any) and
    in the replica's metrics under the version that answered (``version`` if none did). Not counted:
    a candidate still loading its model (NotReady, not Overloaded), a cancelled caller. An
    idle-priority shadow call (``shadow_priority=idle``) waits for spare CPU: the rollout counts it
    without its latency, and one that ran out of time as dropped, not failed."""
    s, start = res.settings, time.perf_counter()
    ok, counted = False, True
    idle = arm == "shadow" and s.shadow_priority == "idle"
    try:
        out = await within(
            port.predict(pixels), s.predict_timeout_s, part=f"{arm} predictor", knob="predict_timeout_s"
        )
        ok, version = True, out.model_version
        return out
    except NotReady as exc:
        if not isinstance(exc, Overloaded):
            counted = False
        raise
    except UpstreamTimeout:
        if idle and res.rollout is not None:
            counted = False
            res.rollout.counter.dropped += 1
        raise
    except asyncio.CancelledError:
        counted = False
        raise
    except NicheloopError:
        raise
    except Exception as exc:  # a model's own bug: a 502 (a candidate's: the champion answers)
        # the caller learns the kind, the log the rest (a Ray error carries a remote traceback)
        log.exception("the %s model failed a request", arm)
        raise ModelFailed(
            f"the {arm} model failed on this request ({_kind(exc)}); see the server log"
        ) from exc
    finally:
        seconds = time.perf_counter() - start
        if counted:
            res.calls.record(arm, version, seconds, ok=ok)
            if res.rollout is not None:  # outside a rollout too: the operator's view of the champion
                ms = None if idle else seconds * 1000
                res.rollout.counter.record(NO_ROLLOUT if rollout_id is None else rollout_id, arm, ms, ok=ok)


def _kind(exc: Exception) -> str:
    """The exception's type, and the type a Ray task error wraps (``RayTaskError(RuntimeError)``)."""
    cause = getattr(exc, "cause", None)
    return (
        f"{type(exc).__name__}({type(cause).__name__})"
        if isinstance(cause, BaseException)
        else type(exc).__name__
    )


async def _publish(res: GatewayResources, event: PredictionEvent) -> None:
    await within(
        asyncio.to_thread(res.publisher.publish, PREDICTIONS_TOPIC, event.prediction_id, event),
        res.settings.storage_timeout_s,
        part="event spool",
        knob="storage_timeout_s",
    )


def _mirror(res: GatewayResources, upload: Upload, digest: str, routing: Routing, *, twin: str) -> None:
    """Send the image to the candidate in shadow, in the background: its answer becomes a ``shadow``
    event paired with the champion's ``twin``, never an answer. Dropped (and counted) when the
    replica has ``shadow_max_concurrency`` out, or is at half its bound of predictions: under load
    the champion's callers come first."""
    assert res.rollout is not None and res.candidate is not None
    limit = res.settings.shadow_max_concurrency
    shadows = res.rollout.shadows
    if len(shadows) >= limit or res.admission.inside * 2 >= res.admission.limit:
        res.rollout.counter.dropped += 1
        return
    task = asyncio.ensure_future(_shadow(res, upload, digest, routing, twin))
    shadows.add(task)
    task.add_done_callback(shadows.discard)


async def _shadow(res: GatewayResources, upload: Upload, digest: str, routing: Routing, twin: str) -> None:
    assert res.candidate is not None
    try:
        out = await _timed(
            res,
            res.shadow or res.candidate,
            upload.pixels,
            "shadow",
            rollout_id=routing.rollout_id,
            version=routing.candidate,
        )
        event = _event(res, new_prediction_id(res.key), out, digest, upload.stats, arm="shadow", twin=twin)
        if res.settings.event_logging:
            await _publish(res, event)
    except Exception as exc:  # noqa: BLE001  counted by _timed; a shadow never fails a caller
        log.info("shadow call to the candidate failed (%s)", exc)


def _lap(timings: dict[str, float], step: str, since: float) -> float:
    now = time.perf_counter()
    timings[step] = (now - since) * 1000
    return now


def _event(
    res: GatewayResources,
    prediction_id: str,
    out: ModelOutput,
    digest: str,
    stats: dict[str, float],
    *,
    arm: Arm,
    twin: str | None = None,
) -> PredictionEvent:
    best = max(range(len(out.probs)), key=out.probs.__getitem__)
    return PredictionEvent(
        prediction_id=prediction_id,
        model_name=res.settings.model_name,
        model_version=out.model_version,
        label=out.class_names[best],
        probs=out.probs,
        class_names=out.class_names,
        uncertainty=out.uncertainty,
        embedding=out.embedding,
        early_embedding=out.early_embedding,
        image_sha256=digest,
        image_stats=stats,
        arm=arm,
        paired_with=twin,
    )
