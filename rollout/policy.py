"""The retraining policy: drift proposes, labels confirm, cost decides.

Evaluated on the evidence of the moment (:class:`Evidence`: alarms and how long they have held,
labels since the champion's snapshot, the champion's accuracy on users' labels, the review budget,
training already running, the last run, the champion's age, the new world it was trained for),
:func:`decide` says ``train`` or ``wait``, by which rule and why, with the figures it used. The
thresholds are a YAML file of the keys of :class:`RetrainPolicy` (recipes/policies/*.yaml); every
key has a default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nicheloop.yamlfile import load_yaml_model
from rollout.stats import accuracy_interval


class RetrainPolicy(BaseModel):
    """When the loop retrains by itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alarm_hold_s: float = Field(
        1800.0, ge=0, description="How long a drift alarm must hold before it may start a run."
    )
    labels_after_alarm: int = Field(
        100,
        ge=1,
        description="New labels of the alarm's traffic (served since the window that raised it began) "
        "that confirm a drift alarm.",
    )
    accuracy_drop_points: float = Field(
        3.0,
        gt=0,
        description="Champion accuracy on users' labels this many points under its held-out figure...",
    )
    accuracy_min_labels: int = Field(100, ge=1, description="... over at least this many users' labels...")
    accuracy_alpha: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="... and beyond chance: the users' accuracy's anytime-valid interval at this level "
        "lies wholly that many points under the held-out figure (the policy looks again and again).",
    )
    labels_after_drop: int = Field(50, ge=1, description="New labels an accuracy drop needs to train on.")
    new_labels: int = Field(
        500, ge=1, description="New labels since the champion's snapshot that are worth a run on their own."
    )
    max_age_s: float = Field(
        7 * 86_400.0, gt=0, description="The periodic floor: a champion this old is retrained..."
    )
    labels_for_age: int = Field(20, ge=1, description="... if at least this many labels are new.")
    cooldown_s: float = Field(
        6 * 3600.0, ge=0, description="Least time between the end of one run and the start of the next."
    )
    recovery_growth: float = Field(
        1.0,
        ge=0,
        description="After a shift, a champion trained for the new world is retrained once the world's "
        "new labels are this multiple of those it learnt from (1: each run doubles them), and at "
        "least labels_after_alarm; 0: never.",
    )
    recovery_window_s: float = Field(
        3 * 86_400.0, ge=0, description="... while the new world is younger than this."
    )
    stopgap_images: int = Field(
        128,
        ge=0,
        description="On an image or embedding alarm, the champion's batch-norm statistics are "
        "recalibrated on this many recent images and rolled out, served once they win in shadow "
        "(training.adapt; once per champion); 0: never.",
    )


@dataclass(frozen=True)
class Evidence:
    """What the policy weighs, at ``now`` (seconds since the epoch)."""

    now: float
    new_labels: int  # labeled images not in the champion's snapshot
    champion: str | None = None  # the version the evidence is about
    alarm_since: float | None = None  # the oldest drift alarm still raised, when it was raised
    labels_after_alarm: int = 0  # new labels of traffic served since the window that raised it began
    accuracy_drop_points: float | None = None  # held-out accuracy minus accuracy on users' labels
    user_labels: int = 0  # users' labels of the champion's predictions that figure is from
    holdout_accuracy: float | None = None  # the champion's held-out accuracy (a fraction)
    training: bool = False  # a run is going on
    rollout_live: bool = False  # a candidate is going through its rollout
    last_run_at: float | None = None  # when the last run ended
    champion_since: float | None = None  # when the champion was registered
    budget_left_hour: int | None = None  # the review budget left this hour
    input_alarm_since: float | None = None  # the oldest image or embedding alarm still raised
    stopgap: str | None = None  # the stopgap made for the champion (or the champion, if it is one)
    new_by_class: dict[str, int] = field(default_factory=dict)  # new_labels, per class
    after_alarm_by_class: dict[str, int] = field(default_factory=dict)  # labels_after_alarm, per class
    world_since: float | None = None  # when the new world the champion was trained for began
    world_labels: int = 0  # labels of that world in the champion's snapshot
    world_new_labels: int = 0  # new labels of that world (served since it began)


@dataclass(frozen=True)
class Decision:
    """What the policy says, by which rule, why, and the figures it used."""

    action: Literal["train", "wait"]
    rule: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


def decide(ev: Evidence, policy: RetrainPolicy) -> Decision:
    """``train`` when a rule fires and nothing forbids a run; else ``wait``, saying for what."""
    figures = {k: v for k, v in asdict(ev).items() if v is not None}
    if ev.training:
        return Decision(
            "wait", "training", "a run is going on; its candidate goes through the rollout", figures
        )
    if ev.rollout_live:
        return Decision(
            "wait", "rollout", "a candidate is going through its rollout; its outcome comes first", figures
        )
    if ev.last_run_at is not None and ev.now - ev.last_run_at < policy.cooldown_s:
        left = policy.cooldown_s - (ev.now - ev.last_run_at)
        return Decision(
            "wait",
            "cooldown",
            f"the last run ended {_ago(ev.now - ev.last_run_at)} ago; {_ago(left)} of cooldown left",
            figures,
        )
    for rule in (_drift, _accuracy, _labels, _recovery, _age):
        fired = rule(ev, policy)
        if fired is not None:
            return Decision("train", fired[0], fired[1], figures)
    return Decision("wait", "evidence", waiting_for(ev, policy), figures)


def _drift(ev: Evidence, p: RetrainPolicy) -> tuple[str, str] | None:
    if (
        ev.alarm_since is None
        or ev.now - ev.alarm_since < p.alarm_hold_s
        or ev.labels_after_alarm < p.labels_after_alarm
    ):
        return None
    return "drift", (
        f"a drift alarm has held for {_ago(ev.now - ev.alarm_since)} and {ev.labels_after_alarm} labels "
        f"of its traffic confirm it{_most(ev.after_alarm_by_class)} (policy: {p.alarm_hold_s:.0f}s, "
        f"{p.labels_after_alarm} labels)"
    )


def _most(by_class: dict[str, int], top: int = 3) -> str:
    """The classes most of the labels fall in, for a reason ("" when not counted)."""
    ranked = sorted(by_class.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return ", most of " + ", ".join(f"{c} ({n})" for c, n in ranked) if ranked else ""


def _accuracy(ev: Evidence, p: RetrainPolicy) -> tuple[str, str] | None:
    drop = ev.accuracy_drop_points
    if drop is None or ev.user_labels < p.accuracy_min_labels or drop < p.accuracy_drop_points:
        return None
    if ev.new_labels < p.labels_after_drop:
        return None
    upper = None
    if ev.holdout_accuracy is not None:  # a small hold-out's 100% against users' 96% is chance, not a drop
        hits = min(ev.user_labels, max(0, round((ev.holdout_accuracy - drop / 100) * ev.user_labels)))
        upper = accuracy_interval(hits, ev.user_labels, p.accuracy_alpha)[1]
        if upper > ev.holdout_accuracy - p.accuracy_drop_points / 100:
            return None
    beyond = f", beyond chance (at most {100 * upper:.1f}% right)" if upper is not None else ""
    return "accuracy", (
        f"on {ev.user_labels} users' labels the champion is {drop:.1f} points under its held-out "
        f"accuracy{beyond} (policy: {p.accuracy_drop_points:.1f}), and {ev.new_labels} labels are new"
    )


def _labels(ev: Evidence, p: RetrainPolicy) -> tuple[str, str] | None:
    if ev.new_labels < p.new_labels:
        return None
    return "labels", f"{ev.new_labels} labels are new since the champion's snapshot (policy: {p.new_labels})"


def recovery_labels(ev: Evidence, p: RetrainPolicy) -> int | None:
    """The new labels of the new world the ``recovery`` rule wants now (None: it does not apply: no
    new world, the champion learnt none of it, the world is past the window, or the rule is off)."""
    if p.recovery_growth == 0 or ev.world_since is None or ev.world_labels == 0:
        return None
    if ev.now - ev.world_since > p.recovery_window_s:
        return None
    return max(p.labels_after_alarm, math.ceil(p.recovery_growth * ev.world_labels))


def _recovery(ev: Evidence, p: RetrainPolicy) -> tuple[str, str] | None:
    # a model learns a new world in steps that double its labels: one run on the alarm's first labels
    # leaves most of the recovery to the labels that come after it
    need = recovery_labels(ev, p)
    if need is None or ev.world_since is None or ev.world_new_labels < need:
        return None
    return "recovery", (
        f"the world that began {_ago(ev.now - ev.world_since)} ago is still new: "
        f"the champion learnt it from {ev.world_labels} labels and {ev.world_new_labels} more have come "
        f"(policy: {p.recovery_growth:g}x, at least {p.labels_after_alarm}, within "
        f"{_ago(p.recovery_window_s)})"
    )


def _age(ev: Evidence, p: RetrainPolicy) -> tuple[str, str] | None:
    if (
        ev.champion_since is None
        or ev.now - ev.champion_since < p.max_age_s
        or ev.new_labels < p.labels_for_age
    ):
        return None
    return "age", (
        f"the champion is {_ago(ev.now - ev.champion_since)} old (policy: {_ago(p.max_age_s)}) and "
        f"{ev.new_labels} labels are new"
    )


def stopgap_due(ev: Evidence, p: RetrainPolicy) -> str | None:
    """Why a label-free stopgap is due now (None: it is not): an image or embedding alarm holds, the
    champion has none yet, and no run or trained candidate's rollout is going on."""
    if p.stopgap_images == 0 or ev.input_alarm_since is None or ev.stopgap is not None:
        return None
    if ev.training or ev.rollout_live:
        return None
    return (
        f"an image or embedding alarm has held for {_ago(ev.now - ev.input_alarm_since)}: the champion's "
        f"batch-norm statistics are recalibrated on {p.stopgap_images} recent images while labels come"
    )


def waiting_for(ev: Evidence, p: RetrainPolicy) -> str:
    """What each rule still lacks, in a sentence."""
    waits = [f"{max(0, p.new_labels - ev.new_labels)} more new labels"]
    if ev.alarm_since is not None:
        held = ev.now - ev.alarm_since
        need = [f"{_ago(p.alarm_hold_s - held)} more alarm"] if held < p.alarm_hold_s else []
        if ev.labels_after_alarm < p.labels_after_alarm:
            need.append(f"{p.labels_after_alarm - ev.labels_after_alarm} more labels of the alarm's traffic")
        waits.append("a drift alarm confirmed: " + " and ".join(need))
    recovery = recovery_labels(ev, p)
    if recovery is not None:
        waits.append(f"{recovery - ev.world_new_labels} more labels of the new world")
    if ev.champion_since is not None:
        left = p.max_age_s - (ev.now - ev.champion_since)
        waits.append(
            f"the periodic floor in {_ago(left)}"
            if left > 0
            else f"{p.labels_for_age - ev.new_labels} more new labels for the periodic floor"
        )
    return "waiting for " + "; or ".join(waits)


def _ago(seconds: float) -> str:
    """A duration in the largest unit that keeps it readable (a clock skew's negative: 0 s)."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def load_policy(path: Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RetrainPolicy:
    """The policy in ``path`` (none: the defaults), with ``key=value`` overrides.

    Raises:
        InvalidInput: a missing or malformed file, an unknown key or a value out of range.
    """
    return load_yaml_model(
        RetrainPolicy, path, overrides, what="retraining policy", examples="recipes/policies/*.yaml"
    )
