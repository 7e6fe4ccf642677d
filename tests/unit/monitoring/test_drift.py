"""Drift monitors: image statistics, the reference, the tests, windows, alarms and the stage."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from pydantic import ValidationError

from monitoring.drift.monitor import MonitorConfig, MonitorResult
from monitoring.drift.monitors.embedding import EmbeddingDrift
from monitoring.drift.monitors.image import ImageDrift
from monitoring.drift.monitors.label import label_drift
from monitoring.drift.monitors.prediction import prediction_drift
from monitoring.drift.stage import DriftConfig, DriftStage, Transition
from monitoring.drift.twosample import MeanDistance, MeanShift, Novelty, WithinClass, macro_f1
from monitoring.drift.windows import Alarm, Window, WindowSpec
from monitoring.metrics import MonitorMetrics
from nicheloop.bus import parse_event
from nicheloop.contracts import DRIFT_TOPIC, IMAGE_STATS, FeedbackEvent, PredictionEvent
from nicheloop.driftlog import DriftLog, DriftWindow
from nicheloop.errors import NotFound
from nicheloop.images import image_statistics
from nicheloop.reference import Reference
from nicheloop.store import Store
from nicheloop.synthetic import make_image

# -- image statistics ------------------------------------------------------------------------------


def _texture(seed: int = 0, size: int = 200) -> Image.Image:
    return make_image("crazing", np.random.default_rng(seed), size).convert("RGB")


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def test_image_statistics_move_with_the_shift_they_are_for() -> None:
    img = _texture()
    base = image_statistics(img)
    assert list(base) == list(IMAGE_STATS) and base["width"] == base["height"] == 200.0
    assert image_statistics(img.filter(ImageFilter.GaussianBlur(2)))["sharpness"] < 0.5 * base["sharpness"]
    assert (
        image_statistics(ImageEnhance.Brightness(img).enhance(0.6))["brightness"] < 0.7 * base["brightness"]
    )
    assert image_statistics(ImageEnhance.Contrast(img).enhance(0.5))["contrast"] < 0.7 * base["contrast"]
    noisy = np.clip(
        np.asarray(img, np.float32) + np.random.default_rng(1).normal(0, 12, (200, 200, 1)), 0, 255
    )
    assert image_statistics(Image.fromarray(noisy.astype(np.uint8)))["noise"] > base["noise"] + 5
    assert image_statistics(_jpeg(img, 15))["blockiness"] > base["blockiness"] + 0.2
    grey = image_statistics(img.convert("L"))
    assert grey["red_mean"] == grey["green_mean"] == grey["blue_mean"]
    assert image_statistics(Image.new("RGB", (4, 3)))["blockiness"] == 1.0  # too small for a block grid


# -- reference ---------------------------------------------------------------------------------------


def _reference(n: int = 400, d: int = 8, k: int = 3, seed: int = 0, accuracy: float = 0.9) -> Reference:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(k) * 0.5, n)
    return Reference(
        rng.normal(size=(n, d)),
        rng.normal(100, 10, (n, len(IMAGE_STATS))),
        probs,
        probs.argmax(1),
        tuple("abc"[:k]),
        accuracy,
        0.85,
    )


def test_reference_round_trip_and_legacy_embeddings(tmp_path: Path) -> None:
    ref = dataclasses.replace(_reference(50), early=np.arange(50 * 4, dtype=np.float32).reshape(50, 4))
    ref.save(tmp_path)
    back = Reference.load(tmp_path)
    assert np.allclose(back.embeddings, ref.embeddings) and np.allclose(back.stats, ref.stats)
    np.testing.assert_array_equal(back.early, ref.early)
    before_early = tmp_path / "before_early"  # a reference.npz written before early features existed
    before_early.mkdir()
    with np.load(tmp_path / "reference.npz") as z:
        np.savez(before_early / "reference.npz", **{k: z[k] for k in z.files if k != "early"})
    assert Reference.load(before_early).early.shape == (0, 0)
    assert back.class_names == ref.class_names and back.accuracy == pytest.approx(0.9)
    legacy = tmp_path / "old"
    legacy.mkdir()
    np.save(legacy / "reference.npy", np.ones((5, 3), np.float32))
    old = Reference.load(legacy)
    assert old.embeddings.shape == (5, 3) and len(old.stats) == 0 and np.isnan(old.accuracy)
    with pytest.raises(ValueError, match="one row"):
        Reference(
            np.zeros((3, 2)), np.zeros((2, len(IMAGE_STATS))), np.zeros((3, 2)), np.zeros(3), ("a", "b")
        )


# -- monitors ------------------------------------------------------------------------------------------


def test_vectorised_ks_matches_scipy() -> None:
    from scipy.stats import ks_2samp

    from monitoring.drift.twosample import ks_columns

    rng = np.random.default_rng(2)
    ref, cur = rng.normal(size=(600, 4)), rng.normal(size=(150, 4)) + [0.0, 0.1, 0.3, 0.6]
    ours = ks_columns(np.sort(ref, axis=0), cur)
    theirs = [ks_2samp(ref[:, j], cur[:, j]).pvalue for j in range(4)]
    assert np.allclose(ours, theirs, atol=0.01, rtol=0.05)
    later = ks_columns(np.sort(ref[:, :1], axis=0), cur[:, 3:4], "greater")[0]
    assert later < 1e-6 and ks_columns(np.sort(ref[:, :1], axis=0), -cur[:, 3:4], "greater")[0] > 0.5


def test_class_mix_chi_square_matches_scipy() -> None:
    from scipy.stats import chi2_contingency

    from monitoring.drift.twosample import chi2

    rng = np.random.default_rng(3)
    for shares in ((0.25, 0.25, 0.25, 0.25), (0.4, 0.3, 0.2, 0.1), (0.5, 0.5, 0.0, 0.0)):
        ref, cur = rng.choice(4, 500), rng.choice(4, 200, p=shares)
        table = np.vstack([np.bincount(ref, minlength=4), np.bincount(cur, minlength=4)])
        want = chi2_contingency(table[:, table.sum(0) > 0], correction=False).pvalue
        assert chi2(ref, cur) == pytest.approx(want, rel=1e-9, abs=1e-300)
    assert chi2(np.zeros(50, int), np.zeros(20, int)) == 1.0  # one class seen: nothing to compare
    assert chi2(rng.choice(3, 50), np.zeros(0, int)) == 1.0  # an empty window


def test_novelty_tests_hold_their_level_on_unshifted_windows_and_see_a_small_mixture() -> None:
    rng = np.random.default_rng(3)
    nov = Novelty(rng.normal(size=(600, 6)))
    null = [min(nov.p_values(rng.normal(size=(150, 6))).values()) < 0.01 for _ in range(200)]
    assert np.mean(null) <= 0.04
    mixed = np.vstack([rng.normal(size=(120, 6)), rng.normal(size=(30, 6)) + 4.0])  # 20% far away
    assert nov.p_values(mixed)["novelty_tail"] < 1e-6


def test_image_monitor_flags_a_mixture_and_reports_insufficient_data() -> None:
    ref = _reference()
    mon = ImageDrift(ref, alpha=0.01, min_samples=30)
    rng = np.random.default_rng(4)
    same = mon(rng.normal(100, 10, (200, len(IMAGE_STATS))))
    shifted = rng.normal(100, 10, (200, len(IMAGE_STATS)))
    shifted[:40, IMAGE_STATS.index("sharpness")] *= 0.1  # 20% blurred
    moved = mon(shifted)
    assert same.status == "ok" and not same.drifted and moved.drifted and moved.p_value < same.p_value
    assert moved.details["p_marginal"] <= 1.0 and "p_novelty_tail" in moved.details
    few = mon(shifted[:10])
    assert few.status == "insufficient_data" and few.p_value is None and few.score is None
    assert (
        ImageDrift(_reference(19), alpha=0.01, min_samples=30)(shifted).status == "insufficient_data"
    )  # reference too small
    assert ImageDrift(_reference(20), alpha=0.01, min_samples=30)(shifted).status == "ok"


def _classed(
    n: int, rng: np.random.Generator, shares: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3)
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of three classes whose brightness and contrast differ far more between classes than
    within one (steel surfaces), R, G and B equal to the brightness (grey images), and their classes."""
    y = rng.choice(3, n, p=shares)
    stats = rng.normal(1.0, 0.05, (n, len(IMAGE_STATS)))
    level = np.array([60.0, 120.0, 180.0])[y]
    brightness = level * (1 + rng.normal(0, 0.05, n))
    for name in ("brightness", "red_mean", "green_mean", "blue_mean"):
        stats[:, IMAGE_STATS.index(name)] = brightness
    stats[:, IMAGE_STATS.index("contrast")] = level / 4 * (1 + rng.normal(0, 0.05, n))
    return stats, y


def test_mean_shift_holds_its_level_and_spends_no_freedom_on_copied_columns() -> None:
    rng = np.random.default_rng(11)
    ref = rng.normal(size=(400, 3))
    shift = MeanShift(np.hstack([ref, ref[:, :1], np.ones((400, 1))]))  # a copied column and a constant one
    assert shift.k == 3
    null = [
        shift.p_value(np.hstack([x, x[:, :1], np.ones((100, 1))])) < 0.01
        for x in (rng.normal(size=(100, 3)) for _ in range(300))
    ]
    assert np.mean(null) <= 0.03
    moved = rng.normal(size=(100, 3)) + [0.8, 0.0, 0.0]
    assert shift.p_value(np.hstack([moved, moved[:, :1], np.ones((100, 1))])) < 1e-4


def test_within_class_test_sees_a_darker_fifth_that_hides_in_the_spread_between_classes() -> None:
    rng = np.random.default_rng(12)
    ref_stats, ref_y = _classed(600, rng)
    ref = Reference(rng.normal(size=(600, 8)), ref_stats, np.eye(3)[ref_y], ref_y, tuple("abc"), 0.9, 0.9)
    mon = ImageDrift(ref, alpha=0.01, min_samples=30)
    assert isinstance(mon.within_class, WithinClass)
    darker, y = _classed(200, rng)
    darker[:40, [IMAGE_STATS.index(n) for n in ("brightness", "red_mean", "green_mean", "blue_mean")]] *= 0.8
    darker[:40, IMAGE_STATS.index("contrast")] *= 0.8
    with_classes, without = mon(darker, y), mon(darker)
    assert with_classes.drifted and with_classes.details["p_within_class"] < 1e-4
    assert "p_within_class" not in without.details and not without.drifted  # across classes it hides
    # a changed class mix moves the global mean, not the within-class one: the prediction monitor's job
    mix, mix_y = _classed(200, rng, (0.6, 0.2, 0.2))
    assert mon(mix, mix_y).details["p_within_class"] > 0.01
    calm = [mon(*_classed(150, rng)).drifted for _ in range(100)]
    assert np.mean(calm) <= 0.03


@pytest.mark.parametrize("method", ["mean_shift", "novelty", "mmd", "distance", "model"])
def test_embedding_methods_separate_shifted_from_unshifted(method: str) -> None:
    rng = np.random.default_rng(5)
    mon = EmbeddingDrift(rng.normal(size=(300, 32)), method, components=8, alpha=0.01, min_samples=30)
    same, moved = mon(rng.normal(size=(150, 32))), mon(rng.normal(size=(150, 32)) + 0.8)
    assert moved.drifted and moved.score > same.score
    assert (
        method != "novelty" or not same.drifted
    )  # Evidently's bootstrap nulls are looser: benchmarks/drift.py
    assert mon(rng.normal(size=(150, 31))).status == "insufficient_data"  # another model's embeddings


def _early_window(rng: np.random.Generator, n: int, share: float, direction: np.ndarray) -> np.ndarray:
    """Early features like :func:`test_the_early_view_sees_what_the_pre_logits_ignore`'s reference,
    a ``share`` of the rows moved along ``direction``."""
    rows = rng.normal(size=(n, len(direction))) * np.linspace(3.0, 0.3, len(direction))
    rows[: int(share * n)] += direction
    return rows


def test_the_early_view_sees_what_the_pre_logits_ignore() -> None:
    rng = np.random.default_rng(21)
    # early features with a few strong axes (classes) and weaker ones; blur moves a weaker one
    direction = np.zeros(24)
    direction[12] = 5.0
    pre = rng.normal(size=(600, 32))
    mon = EmbeddingDrift(pre, early=_early_window(rng, 600, 0.0, direction), alpha=0.01, min_samples=30)
    pre_window = rng.normal(size=(200, 32))  # the pre-logits did not move
    shifted = mon(pre_window, _early_window(rng, 200, 0.2, direction))
    assert shifted.drifted and shifted.details["p_early"] < 0.005 and shifted.details["p_pre_logits"] > 0.01
    assert shifted.p_value == pytest.approx(min(1.0, 2 * shifted.details["p_early"]))
    assert not mon(pre_window).drifted  # an older gateway's events: the pre-logits alone
    assert mon(pre_window, np.zeros((200, 5))).details.keys() == {"p_pre_logits"}  # another model's: ignored
    calm = [
        mon(rng.normal(size=(200, 32)), _early_window(rng, 200, 0.0, direction)).drifted for _ in range(200)
    ]
    assert np.mean(calm) <= 0.03  # the two views share one alpha


def test_an_unknown_embedding_method_is_refused() -> None:
    with pytest.raises(ValueError, match="mean_shift"):
        EmbeddingDrift(np.zeros((40, 4)), "cosine")  # type: ignore[arg-type]


def test_cached_distance_method_decides_as_evidently_does() -> None:
    import pandas as pd
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import DistanceDriftMethod

    rng = np.random.default_rng(15)
    ref = rng.normal(size=(300, 6))
    ours, theirs = MeanDistance(ref, 0.99), DistanceDriftMethod(bootstrap=True, quantile_probability=0.99)
    state = np.random.get_state()
    decisions = []
    for n, shift in ((100, 0.0), (100, 0.15), (100, 0.3), (200, 0.1), (200, 0.25), (60, 0.5)):
        cur = rng.normal(size=(n, 6)) + shift
        distance, drifted, p_value, threshold = ours(cur)
        score, decided, _ = theirs(pd.DataFrame(cur), pd.DataFrame(ref))
        assert distance == pytest.approx(score, rel=1e-9) and drifted == decided
        assert (p_value <= 2 / 101) == drifted or abs(distance - threshold) < 0.05 * threshold
        decisions.append(drifted)
    assert decisions[0] is False and decisions[-1] is True  # both answers occur: the comparison can fail
    ours(rng.normal(size=(100, 6)))
    assert set(ours._null) == {100, 200, 60}  # one bootstrap per window size
    np.random.set_state(state)


def test_prediction_and_label_monitors() -> None:
    ref = _reference(600, accuracy=0.9)
    rng = np.random.default_rng(6)
    same = prediction_drift(ref, rng.dirichlet(np.ones(3) * 0.5, 200), alpha=0.01, min_samples=50)
    skewed = rng.dirichlet([5.0, 0.2, 0.2], 200)  # nearly everything predicted as class 0
    assert not same.drifted and prediction_drift(ref, skewed, alpha=0.01, min_samples=50).drifted
    truth = ref.labels[:200]
    good = label_drift(ref, truth, truth.copy(), alpha=0.01, min_samples=50)
    bad_pred = truth.copy()
    bad_pred[:60] = (bad_pred[:60] + 1) % 3  # accuracy 0.7 against 0.9 on validation
    bad = label_drift(ref, truth, bad_pred, alpha=0.01, min_samples=50)
    assert not good.drifted and bad.drifted and bad.details["accuracy"] == pytest.approx(0.7)
    assert bad.details["macro_f1"] == pytest.approx(macro_f1(truth, bad_pred))
    # a small validation set all right is an estimate: 45 of 50 right is no drift against it, 35 is
    perfect = dataclasses.replace(_reference(48), accuracy=1.0)
    truth = perfect.labels[:48].repeat(2)[:50]
    chance = truth.copy()
    chance[:5] = (chance[:5] + 1) % 3
    assert not label_drift(perfect, truth, chance, alpha=0.01, min_samples=50).drifted
    worse = truth.copy()
    worse[:15] = (worse[:15] + 1) % 3
    assert label_drift(perfect, truth, worse, alpha=0.01, min_samples=50).drifted
    assert label_drift(ref, truth[:10], truth[:10], alpha=0.01, min_samples=50).status == "insufficient_data"
    assert (
        label_drift(
            Reference.embeddings_only(np.zeros((5, 2))), truth, truth, alpha=0.01, min_samples=50
        ).status
        == "insufficient_data"
    )


# -- windows and alarms ----------------------------------------------------------------------------------


def test_sliding_and_tumbling_count_windows() -> None:
    sliding: Window[int] = Window(WindowSpec("sliding", size=4, step=2))
    due = [sliding.add(i, float(i)) for i in range(6)]
    assert due == [None, [0, 1], None, [0, 1, 2, 3], None, [2, 3, 4, 5]]
    tumbling: Window[int] = Window(WindowSpec("tumbling", size=3))
    due = [tumbling.add(i, float(i)) for i in range(7)]
    assert due == [None, None, [0, 1, 2], None, None, [3, 4, 5], None]


def test_time_windows() -> None:
    sliding: Window[int] = Window(WindowSpec("sliding", size=100, step=1, seconds=10))
    assert [sliding.add(i, t) for i, t in enumerate([0.0, 5.0, 12.0])][-1] == [1, 2]  # event at 0 fell out
    tumbling: Window[int] = Window(WindowSpec("tumbling", size=100, seconds=10))
    due = [tumbling.add(i, t) for i, t in enumerate([0.0, 3.0, 9.9, 10.0, 15.0, 31.0])]
    assert due == [None, None, None, [0, 1, 2], None, [3, 4]]
    with pytest.raises(ValueError, match="kind"):
        WindowSpec("hopping")  # type: ignore[arg-type]


def test_alarm_hysteresis_raises_once_and_clears_after_calm() -> None:
    alarm = Alarm(clear_above=0.1, clear_after=2)
    seq = [
        (True, 0.001),
        (False, 0.05),
        (True, 0.002),
        (False, 0.3),
        (False, 0.04),
        (False, 0.5),
        (False, 0.6),
    ]
    assert [alarm.update(d, p) for d, p in seq] == ["raised", None, None, None, None, None, "cleared"]


# -- the stage -----------------------------------------------------------------------------------------------


def _event(
    i: int,
    ref: Reference,
    rng: np.random.Generator,
    shift: float = 0.0,
    version: str = "1",
    at: datetime | None = None,
    early_shift: float = 0.0,
) -> PredictionEvent:
    """A new event drawn like :func:`_reference`'s rows, moved by ``shift``."""
    stats = dict(zip(IMAGE_STATS, (rng.normal(100, 10, len(IMAGE_STATS)) * (1 - shift)).tolist()))
    probs = rng.dirichlet(np.ones(len(ref.class_names)) * 0.5)
    return PredictionEvent(
        prediction_id=f"p{i}",
        model_name="m",
        model_version=version,
        label=ref.class_names[int(probs.argmax())],
        probs=probs.tolist(),
        class_names=list(ref.class_names),
        uncertainty=0.1,
        embedding=(rng.normal(size=ref.embeddings.shape[1]) + 3 * shift).tolist(),
        early_embedding=(rng.normal(size=ref.early.shape[1]) + early_shift).tolist(),
        image_sha256="1" * 64,
        image_stats=stats,
        created_at=at or datetime.now(UTC),
    )


def test_drift_stage_raises_one_alarm_per_shift_and_resets_on_a_new_version() -> None:
    ref, rng = _reference(600, seed=7), np.random.default_rng(8)
    loaded: list[str] = []
    transitions: list[Transition] = []

    def reference_for(version: str) -> Reference:
        loaded.append(version)
        return ref

    metrics = MonitorMetrics()
    cfg = DriftConfig(window=WindowSpec("sliding", size=100, step=25), monitors=MonitorConfig(min_samples=50))
    stage = DriftStage(reference_for, metrics, cfg, transitions.append)
    clean = [r for i in range(100) for r in stage("t", _event(i, ref, rng))]
    assert {r.monitor for r in clean} == {"image", "embedding", "prediction"}
    assert clean[0].status == "insufficient_data" and not any(r.drifted for r in clean)
    assert metrics.registry.get_sample_value("nicheloop_drift_insufficient_data", {"monitor": "image"}) == 0.0
    for i in range(100, 300):
        stage("t", _event(i, ref, rng, shift=0.5))
    raised = [t for t in transitions if t.state == "raised"]
    assert {t.result.monitor for t in raised} >= {"image", "embedding"}
    assert len(raised) == len({t.result.monitor for t in raised})  # one alarm per monitor, no flapping
    assert all(t.window_start is not None and t.window_start <= datetime.now(UTC) for t in raised)
    assert metrics.registry.get_sample_value("nicheloop_drift_detected", {"monitor": "image"}) == 1.0
    assert (
        metrics.registry.get_sample_value(
            "nicheloop_drift_alarms_total", {"monitor": "image", "state": "raised"}
        )
        == 1.0
    )
    for i in range(300, 600):
        stage("t", _event(i, ref, rng))
    assert any(t.state == "cleared" and t.result.monitor == "image" for t in transitions)
    event = raised[0].event("m")
    assert (event.model_version, event.state, event.monitor) == ("1", "raised", raised[0].result.monitor)
    assert event.window_size == raised[0].result.n and event.p_value == raised[0].result.p_value
    assert parse_event(DRIFT_TOPIC, event.model_dump_json().encode()) == event
    stage("t", _event(600, ref, rng, version="2"))
    assert loaded == ["1", "2"] and stage.current is not None and len(stage.current.window.rows) == 1


def test_drift_stage_feeds_early_features_to_the_embedding_monitor() -> None:
    rng = np.random.default_rng(11)
    ref = dataclasses.replace(_reference(600, seed=12), early=rng.normal(size=(600, 6)))
    cfg = DriftConfig(
        window=WindowSpec("sliding", size=100, step=100),
        monitors=MonitorConfig(min_samples=50),
        fast_window=None,
    )
    stage = DriftStage(lambda v: ref, MonitorMetrics(), cfg)
    results = [r for i in range(100) for r in stage("t", _event(i, ref, rng, early_shift=1.0))]
    [embedding] = [r for r in results if r.monitor == "embedding"]
    assert embedding.drifted and embedding.details["p_early"] < 1e-6
    assert embedding.details["p_pre_logits"] > 0.001  # the pre-logits did not move


def test_drift_stage_scores_user_labels_only() -> None:
    ref, rng = _reference(600, seed=9, accuracy=0.95), np.random.default_rng(10)
    stage = DriftStage(
        lambda v: ref,
        MonitorMetrics(),
        DriftConfig(
            label_window=WindowSpec("sliding", size=60, step=60), monitors=MonitorConfig(min_samples=50)
        ),
    )
    events = [_event(i, ref, rng) for i in range(60)]
    for e in events:
        stage("t", e)
    wrong = [
        ref.class_names[(ref.class_names.index(e.label) + 1) % 3] for e in events
    ]  # every label disagrees
    reviewer = [
        r
        for e, lbl in zip(events, wrong)
        for r in stage("t", FeedbackEvent(prediction_id=e.prediction_id, label=lbl, source="reviewer"))
    ]
    assert reviewer == []
    results = [
        r
        for e, lbl in zip(events, wrong)
        for r in stage("t", FeedbackEvent(prediction_id=e.prediction_id, label=lbl))
    ]
    assert len(results) == 1 and results[0].monitor == "label" and results[0].drifted
    assert stage("t", FeedbackEvent(prediction_id="unknown", label="a")) == []


def test_a_reference_that_cannot_load_means_insufficient_data_not_a_crash() -> None:
    def broken(version: str) -> Reference:
        raise OSError("registry down")

    stage = DriftStage(broken, MonitorMetrics(), DriftConfig(window=WindowSpec("tumbling", size=10)))
    ref, rng = _reference(50), np.random.default_rng(0)
    out = [r for i in range(10) for r in stage("t", _event(i, ref, rng))]
    assert out and all(r.status == "insufficient_data" for r in out)


def test_prediction_events_refuse_non_finite_or_unknown_statistics() -> None:
    ref, rng = _reference(5), np.random.default_rng(0)
    good = _event(0, ref, rng)
    with pytest.raises(ValidationError, match="finite"):
        PredictionEvent(**(good.model_dump() | {"embedding": [float("nan")] * 8}))
    with pytest.raises(ValidationError, match="exactly the keys"):
        PredictionEvent(**(good.model_dump() | {"image_stats": {"brightness": 1.0}}))
    with pytest.raises(ValidationError, match="finite"):
        PredictionEvent(**(good.model_dump() | {"image_stats": dict.fromkeys(IMAGE_STATS, float("inf"))}))
    assert PredictionEvent(**(good.model_dump() | {"image_stats": {}})).image_stats == {}


def test_alarm_windows_get_an_evidently_report_that_the_index_lists(tmp_path: Path) -> None:
    from monitoring.drift.report import INDEX, ReportWriter, list_reports

    ref, rng = _reference(300, seed=11), np.random.default_rng(12)
    transitions: list[Transition] = []
    writer = ReportWriter(tmp_path, every_s=1e9)
    stage = DriftStage(
        lambda v: ref,
        MonitorMetrics(),
        DriftConfig(window=WindowSpec("tumbling", size=100), fast_window=None),
        transitions.append,
        writer,
    )
    for i in range(100):
        stage("t", _event(i, ref, rng))
    assert list_reports(tmp_path) == [] or list_reports(tmp_path)[0]["reason"] == "periodic"
    for i in range(100, 200):
        stage("t", _event(i, ref, rng, shift=0.5))
    raised = [t for t in transitions if t.state == "raised"]
    assert raised and all(t.report == raised[0].report for t in raised)
    html = Path(raised[0].report or "")
    text = html.read_text() if html.is_file() else ""
    assert html.parent.name == "1" and text.lstrip().lower().startswith("<!doctype html")
    assert all(column in text for column in ("sharpness", "blockiness", "confidence", "predicted_class"))
    newest = list_reports(tmp_path)[0]
    assert newest["path"] == str(html) and "raised" in newest["reason"] and newest["window"] == 100
    assert newest["monitors"]["image"]["drifted"] is True
    with (tmp_path / INDEX).open("a") as f:
        f.write('{"torn')  # a crash mid-write leaves half a line: it is skipped
    assert list_reports(tmp_path, version="1")[0] == newest and list_reports(tmp_path, version="9") == []


def test_a_report_renders_when_a_sure_model_spreads_its_confidence_over_a_few_ulps(tmp_path: Path) -> None:
    """A retrained champion answers 1.0 or 1 - 6e-8 in float32: Evidently's histogram of that
    column used to raise, and the alarm's window went without its report."""
    from monitoring.drift.report import render

    rng, n = np.random.default_rng(15), 60
    probs = np.zeros((n, 3), np.float32)
    probs[:, 0] = 1.0
    probs[::2, 0], probs[::2, 1] = np.float32(1 - 6e-8), np.float32(6e-8)
    stats = rng.normal(size=(n, len(IMAGE_STATS)))
    stats[:, 0] = 0.3 + np.where(np.arange(n) % 2, 1e-16, 0.0)  # a statistic a few ulps wide
    reference = Reference(rng.normal(size=(n, 4)), stats, probs, np.zeros(n, dtype=int), ("a", "b", "c"))
    path = render(reference, stats + 1.0, probs, tmp_path / "sure.html")
    assert path.read_text().lstrip().lower().startswith("<!doctype html")


def test_report_every_evaluated_window_when_asked(tmp_path: Path) -> None:
    from monitoring.drift.report import ReportWriter, list_reports

    ref, rng = _reference(300, seed=13), np.random.default_rng(14)
    stage = DriftStage(
        lambda v: ref,
        MonitorMetrics(),
        DriftConfig(window=WindowSpec("tumbling", size=50)),
        reports=ReportWriter(tmp_path, every_s=0),
    )
    for i in range(150):
        stage("t", _event(i, ref, rng))
    reports = list_reports(tmp_path)
    assert len(reports) == 3 and all(r["reason"] == "periodic" and r["window"] == 50 for r in reports)
    assert len({r["path"] for r in reports}) == 3 and all(Path(r["path"]).is_file() for r in reports)


def test_drift_report_command_lists_the_index(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    folder = tmp_path / "drift" / "reports"
    folder.mkdir(parents=True)
    entry = {
        "path": str(folder / "3" / "x.html"),
        "model_version": "3",
        "created_at": "2026-11-23T10:00:00+00:00",
        "reason": "image raised",
        "window": 200,
        "monitors": {"image": {"drifted": True}},
    }
    (folder / "index.jsonl").write_text(json.dumps(entry) + "\n")
    env = {**os.environ, "NICHELOOP_HOME": str(tmp_path)}
    run = [sys.executable, "-m", "cli", "drift", "report"]
    table = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "v3" in table.stdout and "drifted=image" in table.stdout
    as_json = subprocess.run(
        [*run, "--json", "--version", "3"], env=env, capture_output=True, text=True, timeout=120
    )
    assert json.loads(as_json.stdout.splitlines()[0]) == entry
    none = subprocess.run([*run, "--version", "4"], env=env, capture_output=True, text=True, timeout=120)
    assert none.returncode == 0 and none.stdout == "" and "no drift reports yet" in none.stderr


def test_one_blas_thread_limits_blas_and_gives_it_back() -> None:
    from threadpoolctl import threadpool_info

    from monitoring.drift.stage import one_blas_thread

    def blas_threads() -> set[int]:
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    before = blas_threads()
    assert before  # numpy's BLAS is there to limit
    with one_blas_thread():
        assert blas_threads() == {1}
    assert blas_threads() == before


def test_drift_stage_watches_the_champions_traffic_only() -> None:
    ref, rng = _reference(200, seed=2), np.random.default_rng(3)
    loaded: list[str] = []
    cfg = DriftConfig(window=WindowSpec("sliding", size=100, step=25), monitors=MonitorConfig(min_samples=50))
    stage = DriftStage(lambda v: loaded.append(v) or ref, MonitorMetrics(), cfg)  # type: ignore[func-returns-value]
    stage("t", _event(0, ref, rng))
    for arm in ("shadow", "candidate"):
        assert stage("t", _event(1, ref, rng, version="2").model_copy(update={"arm": arm})) == []
    assert loaded == ["1"] and stage.current is not None and len(stage.current.window.rows) == 1


def test_every_evaluation_lands_in_the_drift_timeline_with_its_alarm_and_span(any_store: Store) -> None:
    ref, rng = _reference(600, seed=7), np.random.default_rng(8)
    log = DriftLog(any_store)
    cfg = DriftConfig(
        window=WindowSpec("sliding", size=100, step=50),
        monitors=MonitorConfig(min_samples=50),
        fast_window=None,
    )
    stage = DriftStage(lambda v: ref, MonitorMetrics(), cfg, on_window=log.record)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    for i in range(300):
        shift = 0.5 if i >= 150 else 0.0
        event = _event(i, ref, rng, shift=shift, at=start + timedelta(seconds=i))
        event = event.model_copy(update={"image_sha256": f"{i:064x}"})
        any_store.add_prediction(event)
        stage("t", event)
    windows = log.timeline(since=start - timedelta(days=1))
    # one verdict per input monitor per evaluation (every 50 events: 6 evaluations)
    assert len(windows) == 6 * 3 and {w.monitor for w in windows} == {"image", "embedding", "prediction"}
    assert all(w.feed == "inputs" and w.alpha == cfg.monitors.alpha for w in windows)
    image = [w for w in windows if w.monitor == "image"]
    assert [w.change for w in image].count("raised") == 1 and not image[0].alarm and image[-1].alarm
    raised = next(w for w in image if w.change == "raised")
    assert raised.drifted and raised.p_value is not None and raised.p_value < cfg.monitors.alpha
    # a window's span is its events' times: the last window held events 200..299
    assert image[-1].started_at == start + timedelta(seconds=200)
    assert image[-1].ended_at == start + timedelta(seconds=299)
    assert log.window(raised.id or 0) == raised
    # the sample of a window's images comes from its span, the same twice
    sample = log.images(image[-1], k=12)
    assert len(sample) == 12 and sample == log.images(image[-1], k=12)
    assert {int(sha, 16) for sha in sample} <= set(range(200, 300))
    with pytest.raises(NotFound, match="no drift window 999"):
        log.window(999)


def test_the_fast_lane_raises_an_abrupt_change_first_and_leaves_clearing_to_the_main_window(
    any_store: Store,
) -> None:
    ref, rng = _reference(600, seed=7), np.random.default_rng(8)
    log, transitions = DriftLog(any_store), list[Transition]()
    fast = WindowSpec("sliding", size=50, step=25)
    cfg = DriftConfig(
        window=WindowSpec("sliding", size=200, step=50),
        monitors=MonitorConfig(min_samples=50),
        fast_window=fast,
        fast_alpha=1e-6,
    )
    stage = DriftStage(lambda v: ref, MonitorMetrics(), cfg, transitions.append, on_window=log.record)
    start = datetime(2026, 12, 1, tzinfo=UTC)

    def serve(i: int, shift: float) -> list[MonitorResult]:
        return stage("t", _event(i, ref, rng, shift=shift, at=start + timedelta(seconds=i)))

    calm = [r for i in range(1000) for r in serve(i, 0.0)]
    assert not any(t.state == "raised" for t in transitions)  # 39 calm fast windows: nothing raised
    assert len(calm) == 20 * 3  # the main window's 20 evaluations: a calm fast window is not recorded
    # a burst of 30 changed events, then calm again: a fifth of the next main windows, too few for them
    burst = [r for i in range(1000, 1030) for r in serve(i, 0.5)]
    raised = [t for t in transitions if t.state == "raised"]
    assert {t.result.monitor for t in raised} == {"image", "embedding"}
    assert all(t.result.n == 50 and t.result.drifted and (t.result.p_value or 1) < 1e-6 for t in raised)
    assert {r.n for r in burst} == {50}  # the main window had not come due yet
    assert all(t.window_start == start + timedelta(seconds=975) for t in raised)  # events 975..1024
    # stored as a raise at the fast lane's level: the policy counts the alarm's traffic from its start
    stored = [w for w in log.timeline(since=start) if w.change == "raised"]
    assert {(w.monitor, w.n, w.alpha) for w in stored} == {("image", 50, 1e-6), ("embedding", 50, 1e-6)}
    assert log.alarm_since("1", window_start=True) == start + timedelta(seconds=975)
    for i in range(1030, 1600):
        serve(i, 0.0)
    cleared = {t.result.monitor for t in transitions if t.state == "cleared"}
    assert cleared == {"image", "embedding"}  # the main window's calm verdicts cleared it
    assert all(t.result.n == 200 for t in transitions if t.state == "cleared")
    assert log.alarm_since("1") is None


def test_drift_config_refuses_a_fast_lane_it_cannot_run() -> None:
    with pytest.raises(ValueError, match=r"fast lane monitors \['label'\]: use monitors of predictions"):
        DriftConfig(fast_monitors=("label",))
    with pytest.raises(ValueError, match="fast_alpha"):
        DriftConfig(fast_alpha=0.0)


def test_the_fast_lane_is_configured_from_the_settings(tmp_path: Path) -> None:
    from monitoring.runner import drift_config
    from nicheloop.settings import Settings

    fast = Settings(home=tmp_path, drift_fast_window=40, drift_fast_step=10, drift_fast_alpha=1e-5)
    cfg = drift_config(fast)
    assert cfg.fast_window == WindowSpec("sliding", size=40, step=10) and cfg.fast_alpha == 1e-5
    assert drift_config(Settings(home=tmp_path, drift_fast_window=0)).fast_window is None


def test_a_drift_timeline_that_cannot_be_written_stops_nothing() -> None:
    ref, rng = _reference(600, seed=7), np.random.default_rng(8)

    def broken(windows: list[DriftWindow]) -> None:
        raise OSError("database away")

    cfg = DriftConfig(window=WindowSpec("tumbling", size=60), monitors=MonitorConfig(min_samples=50))
    stage = DriftStage(lambda v: ref, MonitorMetrics(), cfg, on_window=broken)
    results = [r for i in range(60) for r in stage("t", _event(i, ref, rng))]
    assert {r.monitor for r in results} == {"image", "embedding", "prediction"}


def _verdict(
    version: str, monitor: str, at: datetime, *, alarm: bool, change: str | None = None
) -> DriftWindow:
    return DriftWindow(
        model_version=version,
        monitor=monitor,
        feed="inputs",
        status="drift" if alarm else "ok",
        n=200,
        alpha=0.01,
        drifted=alarm,
        alarm=alarm,
        change=change,
        started_at=at - timedelta(minutes=5),
        ended_at=at,
        evaluated_at=at,
    )


def test_pruning_the_timeline_keeps_every_transition_and_each_latest_verdict(any_store: Store) -> None:
    from monitoring.runner import prune_timeline

    log, now = DriftLog(any_store), datetime.now(UTC)
    old = [now - timedelta(days=30, minutes=m) for m in range(10, 0, -1)]
    # version 1: calm verdicts, an alarm raised 30 days ago that still holds, its latest verdict old too
    log.record([_verdict("1", "image", at, alarm=False) for at in old[:4]])
    log.record([_verdict("1", "image", old[4], alarm=True, change="raised")])
    log.record([_verdict("1", "image", at, alarm=True) for at in old[5:]])
    # version 1's embedding monitor: one old verdict, its latest
    log.record([_verdict("1", "embedding", old[0], alarm=False)])
    # version 2: recent verdicts, kept whatever they say
    log.record([_verdict("2", "image", now - timedelta(hours=h), alarm=False) for h in (3, 2, 1)])
    since_before = log.alarm_since("1", window_start=True)
    assert since_before == old[4] - timedelta(minutes=5)
    every = log.timeline(since=now - timedelta(days=365))
    assert len(every) == 14

    assert log.prune(before=now - timedelta(days=14), chunk=2) == 8  # in chunks of 2: 4 rounds and a last
    kept = log.timeline(since=now - timedelta(days=365))
    assert [(w.model_version, w.monitor, w.change, w.evaluated_at) for w in kept] == [
        ("1", "image", "raised", old[4]),
        ("1", "image", None, old[9]),
        ("1", "embedding", None, old[0]),
        *[("2", "image", None, now - timedelta(hours=h)) for h in (3, 2, 1)],
    ]
    # what the policy and the sampler read of the alarm is what it was
    assert log.alarm_since("1", window_start=True) == since_before and log.alarm_since("1") == old[4]
    assert log.prune(before=now - timedelta(days=14)) == 0  # nothing more to delete
    assert prune_timeline(log, 0) == 0 and len(log.timeline(since=now - timedelta(days=365))) == 6
    assert prune_timeline(log, 1 / 24 / 60) == 2  # a minute: version 2's older verdicts go too


def test_a_store_made_before_the_timeline_index_gets_it(tmp_path: Path) -> None:
    from sqlalchemy import inspect, text

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with Store(url).engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_drift_windows_version_monitor"))
    names = {i["name"] for i in inspect(Store(url).engine).get_indexes("drift_windows")}
    assert "ix_drift_windows_version_monitor" in names


def test_periodic_reports_past_their_retention_are_deleted_and_an_alarms_are_kept(tmp_path: Path) -> None:
    from monitoring.drift.report import INDEX, ReportWriter, list_reports, prune_reports

    now = datetime.now(UTC)

    def entry(name: str, reason: str, days: float) -> dict[str, object]:
        path = tmp_path / "1" / f"{name}.html"
        path.parent.mkdir(exist_ok=True)
        path.write_text("<html>")
        at = (now - timedelta(days=days)).isoformat()
        return {"path": str(path), "model_version": "1", "created_at": at, "reason": reason}

    entries = [entry("old", "periodic", 30), entry("alarm", "image raised", 30), entry("new", "periodic", 1)]
    (tmp_path / INDEX).write_text("".join(json.dumps(e) + "\n" for e in entries) + '{"torn')
    assert prune_reports(tmp_path, before=now - timedelta(days=14)) == 1
    assert not (tmp_path / "1" / "old.html").exists()
    assert (tmp_path / "1" / "alarm.html").is_file() and (tmp_path / "1" / "new.html").is_file()
    assert [e["path"] for e in list_reports(tmp_path)] == [entries[2]["path"], entries[1]["path"]]
    assert prune_reports(tmp_path, before=now - timedelta(days=14)) == 0
    # the writer prunes after it writes, when it keeps reports for a number of days only
    with (tmp_path / INDEX).open("a") as f:
        f.write(json.dumps(entry("older", "periodic", 20)) + "\n")
    ref = _reference(300, seed=11)
    written = ReportWriter(tmp_path, keep_days=14).write(
        "1", ref, ref.stats[:60], ref.probs[:60], [], "periodic"
    )
    assert written is not None and written.is_file() and not (tmp_path / "1" / "older.html").exists()
    assert len(list_reports(tmp_path)) == 3
