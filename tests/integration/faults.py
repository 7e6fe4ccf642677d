"""Fault injection against the real broker: kills while feedback flows, counted by event id.

Used by the integration tests (small counts) and by ``make soak`` (full size), which prints
one JSON line: events_sent, events_acked, joined, lost, duplicated, broker_kills,
consumer_kills, dead_lettered.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deploy.local import stack
from nicheloop.bus import EventConsumer, Publisher, dead_letters, ensure_topics, read_topic
from nicheloop.contracts import FEEDBACK_TOPIC, PREDICTIONS_TOPIC, FeedbackEvent, PredictionEvent
from nicheloop.settings import Settings
from nicheloop.store import LabeledExample, Store

log = logging.getLogger(__name__)
CLASSES = ["crazing", "inclusion", "patches", "scratches"]
SECONDS_PER_KILL = 20.0


@dataclass
class FaultReport:
    events_sent: int
    events_acked: int
    joined: int
    lost: int
    duplicated: int
    broker_kills: int
    consumer_kills: int
    dead_lettered: int
    kafka_duplicates: int  # records the broker holds twice (absorbed by the idempotent store)


class FaultRig:
    """A broker and a join-only monitor process on their own ports and home."""

    def __init__(self, home: Path, base_port: int, database_url: str | None = None) -> None:
        self.settings = Settings(
            home=home,
            kafka_port=base_port,
            kafka_controller_port=base_port + 1,
            metrics_port=base_port + 2,
            mlflow_port=base_port + 3,
            database_url=database_url,
        )
        self.store = Store(self.settings.db_url)

    def start_broker(self) -> None:
        stack.start_kafka(self.settings)
        deadline = time.monotonic() + 60
        while True:
            try:
                ensure_topics(self.settings.bootstrap_servers)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def kill_broker(self, down_s: float = 1.0) -> None:
        stack.kill_process(self.settings, "kafka")
        time.sleep(down_s)
        self.start_broker()

    def start_joiner(self) -> None:
        s = self.settings
        stack.start_monitor(s, stages="join")

    def kill_joiner(self) -> None:
        stack.kill_process(self.settings, "monitor")
        self.start_joiner()

    def down(self) -> None:
        stack.down(self.settings)

    def joined(self, prefix: str) -> tuple[int, int]:
        """(labeled rows, distinct prediction ids) among ids starting with ``prefix``."""
        with Session(self.store.engine) as s:
            q = select(func.count(), func.count(LabeledExample.prediction_id.distinct())).where(
                LabeledExample.prediction_id.like(f"{prefix}%")
            )
            rows, distinct = s.execute(q).one()
        return int(rows), int(distinct)


def _events(prefix: str, i: int) -> tuple[PredictionEvent, FeedbackEvent]:
    pid = f"{prefix}{i:07d}"
    label = CLASSES[i % len(CLASSES)]
    pred = PredictionEvent(
        prediction_id=pid,
        model_name="soak",
        model_version="1",
        label=label,
        probs=[0.25] * 4,
        class_names=CLASSES,
        uncertainty=1.0,
        embedding=[float(i % 7)] * 8,
        image_sha256=f"{i:064x}",
    )
    return pred, FeedbackEvent(feedback_id=f"fb-{pid}", prediction_id=pid, label=label)


def run(
    rig: FaultRig,
    events: int,
    broker_kills: int,
    consumer_kills: int,
    prefix: str = "soak-",
    settle_s: float = 300.0,
) -> FaultReport:
    """Send ``events`` predictions and feedback while killing the broker and the joiner."""
    publisher = Publisher(rig.settings.bootstrap_servers, rig.settings.home / "spool", name="soak")
    progress = {"sent": 0}
    kills = {"broker": 0, "consumer": 0}
    schedule = sorted(
        [((k + 1) / (broker_kills + 1), "broker") for k in range(broker_kills)]
        + [((k + 0.5) / (consumer_kills + 0.5), "consumer") for k in range(consumer_kills)]
    )

    def killer() -> None:
        for fraction, what in schedule:
            while progress["sent"] < fraction * events:
                time.sleep(0.05)
            log.info("killing the %s at %d/%d events", what, progress["sent"], events)
            rig.kill_broker() if what == "broker" else rig.kill_joiner()
            kills[what] += 1

    thread = threading.Thread(target=killer, name="killer")
    thread.start()
    # Pace the traffic over the kills (a kill and restart take ~15 s): otherwise, once the first
    # kill sends events to the fast local spool, the rest is sent before the next kill comes.
    duration = max(10.0, SECONDS_PER_KILL * (broker_kills + consumer_kills))
    started, acked = time.monotonic(), 0
    for i in range(events):
        time.sleep(max(0.0, started + i * duration / events - time.monotonic()))
        pred, fb = _events(prefix, i)
        publisher.publish(PREDICTIONS_TOPIC, pred.prediction_id, pred)
        publisher.publish_durable(FEEDBACK_TOPIC, fb.prediction_id, fb)
        acked += 1  # publish_durable returned: acknowledged by the broker or fsynced to the spool
        progress["sent"] = i + 1
    thread.join()
    publisher.flush(timeout=settle_s)
    publisher.close()
    deadline = time.monotonic() + settle_s
    while rig.joined(prefix)[1] < acked and time.monotonic() < deadline:
        time.sleep(1)
    rows, distinct = rig.joined(prefix)
    feedback_keys = [
        k for k, _ in read_topic(rig.settings.bootstrap_servers, FEEDBACK_TOPIC) if k and k.startswith(prefix)
    ]
    return FaultReport(
        events_sent=events,
        events_acked=acked,
        joined=distinct,
        lost=acked - distinct,
        duplicated=rows - distinct,
        broker_kills=kills["broker"],
        consumer_kills=kills["consumer"],
        dead_lettered=len(dead_letters(rig.settings.bootstrap_servers)),
        kafka_duplicates=len(feedback_keys) - len(set(feedback_keys)),
    )


def replay_into(rig: FaultRig, database_url: str, group: str, timeout_s: float = 300.0) -> Store:
    """Consume both topics from offset 0 into a fresh store (a new consumer group)."""
    from monitoring.join import Joiner  # the real joiner, as the monitor runs it

    fresh = Store(database_url)
    consumer = EventConsumer(
        rig.settings.bootstrap_servers, [PREDICTIONS_TOPIC, FEEDBACK_TOPIC], group, Joiner(fresh)
    )
    target = rig.store.counts()["labeled_examples"]
    deadline = time.monotonic() + timeout_s
    try:
        while fresh.counts()["labeled_examples"] < target and time.monotonic() < deadline:
            consumer.poll_once(timeout_ms=1000)
        for _ in range(3):  # drain what is left after the target is reached
            consumer.poll_once(timeout_ms=500)
    finally:
        consumer.close()
    return fresh


def main() -> None:
    parser = argparse.ArgumentParser(description="Soak: feedback under broker and consumer kills.")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--broker-kills", type=int, default=5)
    parser.add_argument("--consumer-kills", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=24092)
    parser.add_argument(
        "--home", type=Path, default=None, help="Keep state and logs here (default: a temp dir)."
    )
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="nicheloop-soak-") as tmp:
        home = args.home or Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        rig = FaultRig(home, args.base_port)
        try:
            rig.start_broker()
            rig.start_joiner()
            report = run(rig, args.events, args.broker_kills, args.consumer_kills)
        finally:
            rig.down()
    print(json.dumps(asdict(report)))


if __name__ == "__main__":
    main()
