import logging
import time
from pathlib import Path
from typing import NoReturn

import pytest
from kafka.errors import KafkaConnectionError

from nicheloop.bus import Publisher
from nicheloop.contracts import FEEDBACK_TOPIC, FeedbackEvent
from nicheloop.spool import Spool, SpoolBusy, SpoolDepth, SpoolFull, orphans


def test_fifo_and_durable_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a.spool"
    spool = Spool(path)
    for i in range(5):
        spool.append("t", f"k{i}", f"v{i}")
    head = spool.head(3)
    assert [h.key for h in head] == ["k0", "k1", "k2"]
    spool.remove([h.id for h in head[:2]])
    spool.close()
    again = Spool(path)
    assert len(again) == 3 and [h.value for h in again.head(10)] == ["v2", "v3", "v4"]


def test_bound_refuses_and_warns_when_near(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "b.spool", max_events=5)
    with caplog.at_level(logging.ERROR):
        for i in range(5):
            spool.append("t", "k", str(i))
    assert any("80% full" in r.message for r in caplog.records)
    with pytest.raises(SpoolFull, match="NICHELOOP_SPOOL_MAX_EVENTS"):
        spool.append("t", "k", "overflow")
    assert len(spool) == 5


def test_a_live_spool_is_locked_and_an_ended_one_is_an_orphan(tmp_path: Path) -> None:
    live = Spool(tmp_path / "live.spool")
    with pytest.raises(SpoolBusy):
        Spool(tmp_path / "live.spool")
    ended = Spool(tmp_path / "ended.spool")
    ended.append("t", "k", "v")
    ended.close()
    found = orphans(tmp_path)
    assert [o.path.name for o in found] == ["ended.spool"] and len(found[0]) == 1
    found[0].remove([found[0].head(1)[0].id])
    found[0].destroy()
    assert not (tmp_path / "ended.spool").exists() and len(live) == 0


def test_publisher_spools_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    publisher = Publisher("127.0.0.1:1", tmp_path, retry_s=30.0)
    try:
        for i in range(20):
            publisher.publish(FEEDBACK_TOPIC, f"p{i}", FeedbackEvent(prediction_id=f"p{i}", label="a"))
        publisher.publish_durable(FEEDBACK_TOPIC, "last", FeedbackEvent(prediction_id="last", label="a"))
        assert publisher.spool_depth == 21
        assert [s.key for s in publisher.spool.head(3)] == ["p0", "p1", "p2"]
    finally:
        publisher.close()
    # the events outlive the publisher, for the next one to deliver
    assert sum(len(o) for o in orphans(tmp_path)) == 21


def test_records_stuck_in_a_wedged_producer_are_spooled(tmp_path: Path) -> None:
    publisher = Publisher("127.0.0.1:1", tmp_path, retry_s=30.0, stall_s=5.0)
    try:
        publisher._inflight[1] = (time.monotonic() - 60, FEEDBACK_TOPIC, "old", "{}")
        publisher._inflight[2] = (time.monotonic(), FEEDBACK_TOPIC, "new", "{}")
        assert publisher._check_stalled()
        assert [s.key for s in publisher.spool.head(5)] == ["old", "new"] and not publisher._inflight
        publisher._spool_failed(1, RuntimeError("late errback"))  # already spooled: not twice
        assert publisher.spool_depth == 2
        assert not publisher._check_stalled()
    finally:
        publisher.close()


class NoBroker(Publisher):
    """A publisher whose broker is away and says so at once (a real client takes ~30 s to)."""

    def _make_producer(self) -> NoReturn:
        raise KafkaConnectionError("no broker at 127.0.0.1:1")


def test_a_corrupt_spool_and_an_orphan_over_the_bound_stop_nothing(tmp_path: Path) -> None:
    ended = Spool(tmp_path / "ended.spool")  # a replica that died with 25 events waiting
    for i in range(25):
        ended.append(
            FEEDBACK_TOPIC, f"o{i}", FeedbackEvent(prediction_id=f"o{i}", label="a").model_dump_json()
        )
    ended.close()
    (tmp_path / "bad.spool").write_bytes(b"not a database" * 100)
    publisher = NoBroker("127.0.0.1:1", tmp_path, spool_max_events=10, retry_s=30.0)
    try:
        deadline = time.monotonic() + 20
        while publisher.spool_depth < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert publisher.spool_depth == 5  # took over half its bound, no more: live events keep the rest
        publisher.publish(FEEDBACK_TOPIC, "live", FeedbackEvent(prediction_id="live", label="a"))
        assert publisher.spool_depth == 6 and publisher._drainer.is_alive()
    finally:
        publisher.close()
    assert (tmp_path / "bad.spool.corrupt").exists() and not (tmp_path / "bad.spool").exists()
    assert sum(len(o) for o in orphans(tmp_path)) == 26  # nothing lost, for the next publisher


def test_the_publisher_reports_its_spool_and_the_orphans_it_drains(tmp_path: Path) -> None:
    ended = Spool(tmp_path / "ended.spool")
    ended.append(FEEDBACK_TOPIC, "o", FeedbackEvent(prediction_id="o", label="a").model_dump_json())
    ended.close()
    seen: list[list[SpoolDepth]] = []
    publisher = NoBroker("127.0.0.1:1", tmp_path, retry_s=30.0, report=seen.append, report_every_s=0.05)
    try:
        publisher.publish(FEEDBACK_TOPIC, "live", FeedbackEvent(prediction_id="live", label="a"))
        own = publisher.spool.path.name
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            {d.spool: d.depth for d in r}.get(own) == 2 and any(d.spool == "ended.spool" for d in r)
            for r in seen
        ):
            time.sleep(0.05)
    finally:
        publisher.close()
    reported: dict[str, int] = {}
    for r in seen:
        reported |= {d.spool: d.depth for d in r}
    assert reported == {own: 2, "ended.spool": 0}  # the orphan was emptied into this spool
    assert seen[-1] == [SpoolDepth(own, 2, 100_000)]  # the last word on close: two kept on disk


def test_a_report_that_fails_does_not_stop_delivery_or_later_reports(tmp_path: Path) -> None:
    calls: list[int] = []

    def flaky(depths: list[SpoolDepth]) -> None:
        calls.append(len(depths))
        if len(calls) == 1:
            raise ConnectionError("the store is away")

    publisher = NoBroker("127.0.0.1:1", tmp_path, retry_s=30.0, report=flaky, report_every_s=0.05)
    try:
        deadline = time.monotonic() + 10
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(calls) >= 3 and publisher._drainer.is_alive()
    finally:
        publisher.close()
