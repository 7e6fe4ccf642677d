"""A prediction on the gateway: the upload made ready in one worker thread (decode, orientation,
drift statistics, the model's input geometry), then the predictor and the blob store at once, then
the event handed to the publisher; none of it on the event loop, each wait bounded."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from nicheloop.contracts import PREDICTIONS_TOPIC, PredictionEvent, PredictResponse
from nicheloop.images import decode_image, image_statistics
from nicheloop.pixels import InputSpec, to_pixels
from services.deps import GatewayResources
from services.ids import new_prediction_id
from services.inference import ModelOutput, Pixels
from services.limits import within


@dataclass(frozen=True)
class Upload:
    pixels: Pixels
    stats: dict[str, float]


def prepare(data: bytes, spec: InputSpec, *, max_bytes: int, max_pixels: int) -> Upload:
    """Decode ``data`` once; measure it for drift and bring it to the model's input geometry.

    Raises:
        InvalidInput, PayloadTooLarge: as :func:`nicheloop.images.decode_image`.
    """
    image = decode_image(data, max_bytes, max_pixels)
    return Upload(Pixels(to_pixels(image, spec), spec.key), image_statistics(image))


async def predict_image(res: GatewayResources, data: bytes, timings: dict[str, float]) -> PredictResponse:
    """Classify the image file ``data``; store it by its hash and publish the prediction event.

    ``timings`` gets the milliseconds of each step (``prepare``, ``model``, ``publish``), for the
    answer's ``Server-Timing`` header.

    Raises:
        NotReady: no model serves. Overloaded: the predictor's queue is full.
        UpstreamTimeout: the predictor, blob store or spool did not answer in time.
        InvalidInput, PayloadTooLarge: not an acceptable image.
    """
    s = res.settings
    state = await res.model.served()
    mark = time.perf_counter()
    upload = await asyncio.to_thread(
        prepare, data, state.spec(), max_bytes=s.max_upload_bytes, max_pixels=s.max_image_pixels
    )
    mark = _lap(timings, "prepare", mark)
    out, digest = await asyncio.gather(
        within(
            res.predictor.predict(upload.pixels),
            s.predict_timeout_s,
            part="predictor",
            knob="predict_timeout_s",
        ),
        within(
            asyncio.to_thread(res.blobs.put, data),
            s.storage_timeout_s,
            part="blob store",
            knob="storage_timeout_s",
        ),
    )
    mark = _lap(timings, "model", mark)
    res.model.seen(out.model_version)
    prediction_id = new_prediction_id(res.key)
    event = _event(res, prediction_id, out, digest, upload.stats)
    if s.event_logging:
        await within(
            asyncio.to_thread(res.publisher.publish, PREDICTIONS_TOPIC, prediction_id, event),
            s.storage_timeout_s,
            part="event spool",
            knob="storage_timeout_s",
        )
        _lap(timings, "publish", mark)
    return PredictResponse(
        prediction_id=prediction_id,
        model_version=out.model_version,
        label=event.label,
        probs=dict(zip(out.class_names, out.probs)),
        uncertainty=out.uncertainty,
    )


def _lap(timings: dict[str, float], step: str, since: float) -> float:
    now = time.perf_counter()
    timings[step] = (now - since) * 1000
    return now


def _event(
    res: GatewayResources, prediction_id: str, out: ModelOutput, digest: str, stats: dict[str, float]
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
    )
