"""Windows over the event stream and the alarm state that keeps one shift to one alarm.

A window holds rows (anything: the drift monitor keeps feature rows) with their event times.

- ``sliding`` by count keeps the last ``size`` rows and is due every ``step`` rows;
- ``tumbling`` by count is due when ``size`` rows are in, then starts empty;
- with ``seconds`` > 0 the window is by time instead: ``sliding`` keeps the rows of the last
  ``seconds`` (and is due every ``step`` rows), ``tumbling`` is due when an event falls past the
  end of the current period, which it closes (that event opens the next one).
"""

from __future__ import annotations

from collections import deque
from dataclasses import KW_ONLY, dataclass
from typing import Generic, Literal, TypeVar

from nicheloop.settings import WindowKind

T = TypeVar("T")
Kind = WindowKind


@dataclass(frozen=True)
class WindowSpec:
    kind: Kind = "sliding"
    _: KW_ONLY
    size: int = 200  # rows (count windows; also the cap of time windows)
    step: int = 50  # sliding: rows between evaluations
    seconds: float = 0.0  # > 0: time windows of this length

    def __post_init__(self) -> None:
        if self.kind not in ("sliding", "tumbling"):
            raise ValueError(f"window kind {self.kind!r}: use sliding or tumbling")
        if self.size < 1 or self.step < 1 or self.seconds < 0:
            raise ValueError(f"window size and step must be >= 1 and seconds >= 0, got {self}")


class Window(Generic[T]):
    """Collects rows; :meth:`add` returns the rows to evaluate when the window is due, else None."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.rows: deque[tuple[float, T]] = deque(maxlen=spec.size)
        self.since_due = 0
        self.period_start: float | None = None

    def clear(self) -> None:
        self.rows.clear()
        self.since_due, self.period_start = 0, None

    def add(self, row: T, at: float) -> list[T] | None:
        s = self.spec
        if s.seconds and s.kind == "tumbling":
            if self.period_start is None:
                self.period_start = at
            if at >= self.period_start + s.seconds:
                due = [r for _, r in self.rows]
                self.rows.clear()
                self.period_start = at
                self.rows.append((at, row))
                return due
            self.rows.append((at, row))
            return None
        self.rows.append((at, row))
        if s.seconds:  # sliding by time: forget what fell out of the period
            while self.rows and self.rows[0][0] < at - s.seconds:
                self.rows.popleft()
        self.since_due += 1
        if s.kind == "tumbling":
            if len(self.rows) < s.size:
                return None
            due = [r for _, r in self.rows]
            self.clear()
            return due
        if self.since_due < s.step:
            return None
        self.since_due = 0
        return [r for _, r in self.rows]


@dataclass
class Alarm:
    """Hysteresis: raise when the monitor says drifted, clear only after
    ``clear_after`` evaluations in a row with ``p > clear_above``; in between the state holds, so
    a shift that hovers near the threshold raises one alarm, not a flapping series."""

    clear_above: float = 0.1
    clear_after: int = 3
    raised: bool = False
    calm: int = 0

    def update(self, drifted: bool, p_value: float | None) -> Literal["raised", "cleared"] | None:
        """Feed one evaluation; returns the transition it caused, if any."""
        if drifted:
            self.calm = 0
            if not self.raised:
                self.raised = True
                return "raised"
            return None
        calm = p_value is None or p_value > self.clear_above
        self.calm = self.calm + 1 if calm else 0
        if self.raised and self.calm >= self.clear_after:
            self.raised, self.calm = False, 0
            return "cleared"
        return None
