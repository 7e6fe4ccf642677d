"""The reviewer page on the real stack: Debian's Chromium labels ``--items`` queued items by
keyboard alone (Enter: the model's top class), and the page times each keypress until the next
image is on screen (the frame after it is drawn).

    python -m benchmarks.review_ui              # starts its own stack (own ports and home), ~6 min

Last line JSON: ``median_ms_keypress_to_next_image`` (goal <= 150 on this machine),
``p95_ms_keypress_to_next_image`` (goal <= 400), ``labels_sent`` and ``labels_joined`` (goal
equal: every label the page confirmed is in the store, joined, with the reviewer as actor),
``first_load_kb`` (goal <= 500: the page, its script and its style), ``saliency_ms_p50`` (every
``SALIENCY_EVERY``-th item the reviewer asks where the model looked: keypress to the Grad-CAM on
screen, computed by the served model the first time).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

SALIENCY_EVERY = 10  # items between two looks at where the model looked


def _own_stack(home: Path) -> Any:
    from nicheloop.settings import Settings

    return Settings(
        home=home,
        kafka_port=50092,
        kafka_controller_port=50093,
        mlflow_port=55000,
        ray_port=56379,
        ray_worker_ports=(51000, 52999),
        serve_port=58000,
        ingress_ports=(58100, 58199),
        metrics_port=50100,
        controller_port=50110,
    )


def queue_items(settings: Any, n: int) -> list[str]:
    """``n`` fresh predictions of synthetic images, queued ahead of anything the sampler queued."""
    from cli.demo import as_role, demo_keys
    from nicheloop.review import QueuePolicy, ReviewQueue
    from nicheloop.store import Prediction, Store
    from nicheloop.synthetic import SyntheticStream, png_bytes

    store = Store(settings.db_url)
    queue = ReviewQueue(store, QueuePolicy.from_settings(settings))
    queue.set_budgets({"budget_per_hour": 100_000, "budget_per_day": 100_000,
                       "budget_per_reviewer_hour": 100_000, "budget_per_reviewer_day": 100_000},
                      by="benchmarks/review_ui.py")  # fmt: skip
    with httpx.Client(
        base_url=settings.serve_url, timeout=60, headers=as_role(demo_keys(settings), "app")
    ) as c:
        pids = [
            c.post("/v1/predict", files={"image": ("x.png", png_bytes(img), "image/png")}).json()[
                "prediction_id"
            ]
            for img, _ in SyntheticStream(seed=77, size=settings.image_size).take(n)
        ]
    deadline = time.monotonic() + 300
    while len(store.existing(Prediction.prediction_id, pids)) < len(pids):
        if time.monotonic() > deadline:
            raise TimeoutError("the monitor did not store the predictions within 300 s")
        time.sleep(0.5)
    for i, pid in enumerate(pids):
        queue.enqueue(pid, priority=1e6 - i)
    return pids


def label_by_keyboard(settings: Any, key: str, items: int) -> dict[str, Any]:
    """Open the page, sign in with ``key``, press Enter ``items`` times; the page's own figures."""
    from playwright.sync_api import sync_playwright

    from tests.browser import NEXT_ITEM, chromium_path

    loaded: list[int] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1366, "height": 768})

        # the first load: what the page itself weighs (its HTML, scripts and styles), not the
        # images it fetches for the items later
        def first(r: Any) -> None:
            if r.url.startswith(settings.serve_url) and r.ok:
                loaded.append(len(r.body()))

        page.on("response", first)
        page.goto(f"{settings.serve_url}/review", wait_until="load")
        page.remove_listener("response", first)
        page.fill("#key", key)
        page.keyboard.press("Enter")
        page.wait_for_selector("#work:not([hidden]) #top li", timeout=60_000)
        for i in range(items):
            shown = page.evaluate("window.nicheloopReview.current.task_id")
            if i % SALIENCY_EVERY == 0:  # where the model looked, then back to the image
                page.keyboard.press(".")
                page.wait_for_function("() => window.nicheloopReview.saliency.on", timeout=60_000)
                page.keyboard.press(".")
            page.keyboard.press("Enter")
            if i < items - 1:
                page.wait_for_function(NEXT_ITEM, arg=shown)
            if (i + 1) % 25 == 0:
                print(f"{i + 1}/{items} labeled", flush=True)
        page.wait_for_function(
            "n => window.nicheloopReview.confirmed + window.nicheloopReview.failed.length >= n",
            arg=items,
            timeout=120_000,
        )
        figures = page.evaluate(
            "({timings: window.nicheloopReview.timings, confirmed: window.nicheloopReview.confirmed,"
            " failed: window.nicheloopReview.failed.length, saliency: window.nicheloopReview.saliency.ms})"
        )
        browser.close()
    return {**figures, "first_load_bytes": sum(loaded)}


def joined_labels(settings: Any, actor: str, expected: int, timeout: float = 120.0) -> int:
    """How many of ``actor``'s reviewer labels are joined in the store (waiting up to ``timeout``)."""
    from nicheloop.store import LabeledExample, Store

    store = Store(settings.db_url)
    deadline, count = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        with Session(store.engine) as s:
            count = int(
                s.scalar(
                    select(func.count())
                    .select_from(LabeledExample)
                    .where(LabeledExample.actor == actor, LabeledExample.source == "reviewer")
                )
                or 0
            )
        if count >= expected:
            break
        time.sleep(1.0)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200, help="items to label by keyboard")
    args = parser.parse_args()
    from cli.demo import start_loop
    from deploy.local import stack
    from nicheloop.keys import ApiKeys
    from nicheloop.store import Store

    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="nicheloop-review-ui-"))
    settings = _own_stack(home)
    try:
        start_loop(settings, per_class=20, epochs=1)
        queue_items(settings, args.items + 5)
        key, _ = ApiKeys(Store(settings.db_url)).create(
            name="bench-reviewer", role="reviewer", created_by="benchmarks/review_ui.py"
        )
        page = label_by_keyboard(settings, key, args.items)
        joined = joined_labels(settings, "bench-reviewer", page["confirmed"])
    finally:
        stack.down(settings)
        shutil.rmtree(home, ignore_errors=True)
    ms = np.asarray(page["timings"], dtype=np.float64)
    sal = np.asarray(page["saliency"], dtype=np.float64)
    print(
        json.dumps(
            {
                "benchmark": "review_ui",
                "items": args.items,
                "median_ms_keypress_to_next_image": round(float(np.median(ms)), 1) if ms.size else None,
                "p95_ms_keypress_to_next_image": round(float(np.percentile(ms, 95)), 1) if ms.size else None,
                "labels_sent": page["confirmed"],
                "labels_failed": page["failed"],
                "labels_joined": joined,
                "first_load_kb": round(page["first_load_bytes"] / 1024, 1),
                "saliency_ms_p50": round(float(np.median(sal)), 1) if sal.size else None,
                "saliency_asked": int(sal.size),
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
