from pathlib import Path

from nicheloop.spool import SpoolDepth
from nicheloop.spools import FRESH_S, KEEP_S, SpoolReports
from nicheloop.store import Store


def test_fresh_reports_are_summed_and_a_quiet_spool_with_events_is_listed_apart(tmp_path: Path) -> None:
    reports = SpoolReports(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    now = 1_000_000.0
    reports.report([SpoolDepth("dead.spool", 40, 100)], role="gateway", host="b", now=now - 2 * FRESH_S)
    reports.report(
        [SpoolDepth("g1.spool", 30, 100), SpoolDepth("g2.spool", 0, 100)], role="gateway", host="a", now=now
    )
    reports.report([SpoolDepth("m.spool", 5, 10)], role="monitor", host="a", now=now - 1)
    reports.report([SpoolDepth("g2.spool", 7, 100)], role="gateway", host="a", now=now)  # replaced, not added
    got = reports.summary(now=now)
    assert (got["depth"], got["spools"], got["by_role"]) == (42, 3, {"gateway": 37, "monitor": 5})
    assert got["fullest"] == 0.5  # the monitor's 5 of 10
    assert got["silent"] == [
        {"spool": "dead.spool", "role": "gateway", "host": "b", "depth": 40, "age_s": round(2 * FRESH_S)}
    ]
    # a spool adopted and emptied by another publisher reads 0 and leaves the silent list
    reports.report([SpoolDepth("dead.spool", 0, 100)], role="gateway", host="b", now=now)
    assert reports.summary(now=now)["silent"] == [] and reports.summary(now=now)["depth"] == 42


def test_empty_spools_are_forgotten_after_a_day_and_ones_with_events_are_kept(tmp_path: Path) -> None:
    reports = SpoolReports(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    old = 1_000_000.0
    reports.report(
        [SpoolDepth("empty.spool", 0, 10), SpoolDepth("full.spool", 3, 10)], role="gateway", host="a", now=old
    )
    reports.report([SpoolDepth("new.spool", 0, 10)], role="controller", host="a", now=old + KEEP_S + 1)
    got = reports.summary(now=old + KEEP_S + 1)
    assert got["spools"] == 1 and [s["spool"] for s in got["silent"]] == ["full.spool"]
    assert reports.summary(now=old + KEEP_S + 1, fresh_s=2 * KEEP_S)["spools"] == 2  # empty.spool is gone
