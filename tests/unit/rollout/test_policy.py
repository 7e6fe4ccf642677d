from dataclasses import replace
from pathlib import Path

import pytest

from nicheloop.errors import InvalidInput
from rollout.policy import Evidence, RetrainPolicy, decide, load_policy, stopgap_due

POLICY = RetrainPolicy()
NOW = 1_000_000.0


def test_a_drift_alarm_trains_only_once_it_has_held_and_labels_of_traffic_after_it_confirm_it() -> None:
    young = Evidence(NOW, new_labels=150, alarm_since=NOW - 600, labels_after_alarm=150)
    waiting = decide(young, POLICY)
    assert (waiting.action, waiting.rule) == ("wait", "evidence")
    assert "20.0 min more alarm" in waiting.reason and "350 more new labels" in waiting.reason
    unconfirmed = decide(Evidence(NOW, new_labels=150, alarm_since=NOW - 3600, labels_after_alarm=40), POLICY)
    assert unconfirmed.action == "wait" and "60 more labels of the alarm's traffic" in unconfirmed.reason
    confirmed = decide(Evidence(NOW, new_labels=150, alarm_since=NOW - 3600, labels_after_alarm=100), POLICY)
    assert (confirmed.action, confirmed.rule) == ("train", "drift")
    assert "held for 1.0 h" in confirmed.reason and confirmed.figures["labels_after_alarm"] == 100


def test_an_accuracy_drop_on_users_labels_trains_with_enough_of_them() -> None:
    few = Evidence(NOW, new_labels=60, accuracy_drop_points=8.0, user_labels=30)
    assert decide(few, POLICY).action == "wait"  # 30 users' labels say little
    dropped = decide(Evidence(NOW, new_labels=60, accuracy_drop_points=4.0, user_labels=120), POLICY)
    assert (dropped.action, dropped.rule) == ("train", "accuracy") and "4.0 points" in dropped.reason
    assert (
        decide(Evidence(NOW, new_labels=60, accuracy_drop_points=2.0, user_labels=500), POLICY).action
        == "wait"
    )


def test_an_accuracy_drop_within_chance_of_a_small_hold_out_waits() -> None:
    policy = RetrainPolicy(accuracy_min_labels=30, labels_after_drop=30)
    # 100% on a few dozen held-out images, 95% on 40 users' labels: 5 points, and nothing proven
    calm = Evidence(NOW, new_labels=60, accuracy_drop_points=5.0, user_labels=40, holdout_accuracy=1.0)
    assert decide(calm, policy).action == "wait"
    shifted = Evidence(NOW, new_labels=60, accuracy_drop_points=30.0, user_labels=40, holdout_accuracy=0.97)
    verdict = decide(shifted, policy)
    assert (verdict.action, verdict.rule) == ("train", "accuracy") and "beyond chance" in verdict.reason
    assert (
        decide(
            shifted, RetrainPolicy(accuracy_min_labels=30, labels_after_drop=30, accuracy_alpha=1e-12)
        ).action
        == "wait"
    )


def test_many_new_labels_or_an_old_champion_train_and_a_run_or_its_cooldown_waits() -> None:
    assert decide(Evidence(NOW, new_labels=500), POLICY).rule == "labels"
    old = Evidence(NOW, new_labels=25, champion_since=NOW - 8 * 86_400)
    assert (decide(old, POLICY).action, decide(old, POLICY).rule) == ("train", "age")
    assert decide(Evidence(NOW, new_labels=5, champion_since=NOW - 8 * 86_400), POLICY).action == "wait"
    busy = decide(Evidence(NOW, new_labels=900, training=True), POLICY)
    assert (busy.action, busy.rule) == ("wait", "training")
    cooling = decide(Evidence(NOW, new_labels=900, last_run_at=NOW - 3600), POLICY)
    assert (cooling.action, cooling.rule) == (
        "wait",
        "cooldown",
    ) and "5.0 h of cooldown left" in cooling.reason
    assert decide(Evidence(NOW, new_labels=900, last_run_at=NOW - 7 * 3600), POLICY).action == "train"
    calm = decide(Evidence(NOW, new_labels=10, champion_since=NOW - 86_400), POLICY)
    assert calm.action == "wait" and "the periodic floor in 6.0 d" in calm.reason


def test_after_a_shift_the_champion_is_retrained_each_time_the_new_worlds_labels_double() -> None:
    world = Evidence(NOW, new_labels=90, world_since=NOW - 3 * 3600, world_labels=120, world_new_labels=90)
    waiting = decide(world, POLICY)
    assert waiting.action == "wait" and "30 more labels of the new world" in waiting.reason
    doubled = replace(world, new_labels=130, world_new_labels=120)
    verdict = decide(doubled, POLICY)
    assert (verdict.action, verdict.rule) == ("train", "recovery")
    assert "from 120 labels and 120 more" in verdict.reason
    # at least labels_after_alarm, however few the champion learnt from
    few = replace(world, world_labels=10, world_new_labels=60)
    assert "40 more labels of the new world" in decide(few, POLICY).reason
    assert decide(replace(few, world_new_labels=100), POLICY).rule == "recovery"
    # labels of the old world do not count, an old world is no longer new, and 0 turns the rule off
    assert decide(replace(world, new_labels=400), POLICY).action == "wait"
    assert decide(replace(doubled, now=NOW + 4 * 86_400), POLICY).action == "wait"
    assert decide(doubled, RetrainPolicy(recovery_growth=0)).action == "wait"
    assert decide(replace(doubled, world_since=None), POLICY).action == "wait"
    half = RetrainPolicy(recovery_growth=0.5)  # each run on half as many more
    assert decide(replace(world, world_labels=300, world_new_labels=150), half).rule == "recovery"


def test_the_policy_file_and_overrides_are_checked(tmp_path: Path) -> None:
    shipped = load_policy(Path(__file__).parents[3] / "recipes" / "policies" / "default.yaml")
    assert shipped == RetrainPolicy()  # the file documents the defaults
    assert load_policy(None, ["new_labels=50"]).new_labels == 50
    bad = tmp_path / "p.yaml"
    bad.write_text("new_label: 3\n")
    with pytest.raises(InvalidInput):
        load_policy(bad)
    with pytest.raises(InvalidInput):
        load_policy(None, ["cooldown_s=-1"])


def test_a_stopgap_is_due_on_an_input_alarm_once_per_champion_and_never_beside_a_run() -> None:
    alarmed = Evidence(now=NOW, new_labels=0, champion="3", input_alarm_since=NOW - 60)
    why = stopgap_due(alarmed, POLICY)
    assert why is not None and "image or embedding alarm" in why and "128 recent images" in why
    # only a prediction or label alarm: the class mix may be all that moved
    assert stopgap_due(replace(alarmed, input_alarm_since=None, alarm_since=NOW - 60), POLICY) is None
    assert stopgap_due(replace(alarmed, stopgap="4"), POLICY) is None  # one per champion
    assert stopgap_due(replace(alarmed, training=True), POLICY) is None
    assert stopgap_due(replace(alarmed, rollout_live=True), POLICY) is None
    assert stopgap_due(alarmed, POLICY.model_copy(update={"stopgap_images": 0})) is None
