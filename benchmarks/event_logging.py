"""Goal: Kafka event logging costs serving at most 3% of its throughput, and loses nothing.

One run, on its own local stack: predictions per second of the real endpoint with logging on
and off (alternating rounds, same images, same concurrency), then delivered == sent from the
topic's offsets. Last line: JSON with throughput_ratio_logging_on_over_off and
delivered_equals_sent.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import ray

from cli.demo import as_role, demo_keys
from deploy.local import stack
from nicheloop.bus import ensure_topics, topic_offsets
from nicheloop.contracts import CHAMPION, PREDICTIONS_TOPIC
from nicheloop.model import build_model
from nicheloop.reference import Reference
from nicheloop.registry import Registry
from nicheloop.rollouts import Rollouts
from nicheloop.settings import Settings
from nicheloop.store import Store
from nicheloop.synthetic import SyntheticStream, png_bytes
from rollout.controller import adopt
from services.app import deploy

ROUNDS, REQUESTS, CONCURRENCY = 3, 300, 8


def _register_champion(settings: Settings) -> None:
    """An untrained model, registered and recorded as champion."""
    model = build_model(
        settings.backbone, ["crazing", "inclusion", "patches", "scratches"], settings.image_size
    )
    registry = Registry(settings.tracking_uri, settings.model_name)
    info = registry.register(
        model,
        Reference.embeddings_only(np.random.default_rng(0).normal(size=(32, 512)).astype(np.float32)),
        params={"benchmark": "event_logging"},
        metrics={},
        lineage={"parent_version": "none"},
        alias=CHAMPION,
    )
    adopt(
        Rollouts(Store(settings.db_url)), registry, version=info.version, actor="benchmark",
        reason="an untrained model to serve", now=time.time(),
    )  # fmt: skip


def _throughput(url: str, images: list[bytes], key: dict[str, str]) -> tuple[float, int]:
    """Requests per second over ``images`` (sent with the headers ``key``) and how many succeeded."""
    with httpx.Client(base_url=url, timeout=60, headers=key) as client:

        def one(data: bytes) -> int:
            return client.post("/v1/predict", files={"image": ("x.png", data, "image/png")}).status_code

        start = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            codes = list(pool.map(one, images))
        return len(images) / (time.perf_counter() - start), codes.count(200)


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()  # no knobs; --help says what it does
    logging.basicConfig(level="WARNING")
    with tempfile.TemporaryDirectory(prefix="nicheloop-bench-") as home:
        base = Settings(
            home=Path(home),
            kafka_port=39192,
            kafka_controller_port=39193,
            mlflow_port=39150,
            ray_port=39379,
            ray_worker_ports=(34000, 35999),
            serve_port=39180,
            metrics_port=39199,
            ingress_ports=(38100, 38199),
        )
        try:
            # no monitor: it would share the CPU being measured
            stack.up(base, only=["kafka", "mlflow", "ray"])
            ensure_topics(base.bootstrap_servers)
            _register_champion(base)
            images = [
                png_bytes(img) for img, _ in SyntheticStream(seed=1, size=base.image_size).take(REQUESTS)
            ]
            rates: dict[bool, list[float]] = {True: [], False: []}
            sent = 0
            for logging_on in [True, False] * ROUNDS:
                settings = base.model_copy(update={"event_logging": logging_on})
                deploy(settings)
                key = as_role(demo_keys(settings), "app")
                _throughput(settings.serve_url, images[:40], key)  # warm-up (not counted, not logged if off)
                if logging_on:
                    sent += 40
                rate, ok = _throughput(settings.serve_url, images, key)
                rates[logging_on].append(rate)
                sent += ok if logging_on else 0
            deadline = time.monotonic() + 120
            while (
                topic_offsets(base.bootstrap_servers, PREDICTIONS_TOPIC) < sent
                and time.monotonic() < deadline
            ):
                time.sleep(1)
            delivered = topic_offsets(base.bootstrap_servers, PREDICTIONS_TOPIC)
        finally:
            if ray.is_initialized():
                ray.shutdown()
            stack.down(base)
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    print(
        json.dumps(
            {
                "predictions_per_s_logging_on": round(on, 2),
                "predictions_per_s_logging_off": round(off, 2),
                "rounds": ROUNDS,
                "requests_per_round": REQUESTS,
                "concurrency": CONCURRENCY,
                "events_sent": sent,
                "events_delivered": delivered,
                "throughput_ratio_logging_on_over_off": round(on / off, 4),
                "delivered_equals_sent": delivered == sent,
            }
        )
    )


if __name__ == "__main__":
    main()
