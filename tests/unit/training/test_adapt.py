"""The batch-norm stopgap moves the statistics to the new images and nothing else."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nicheloop.blobs import BlobStore
from nicheloop.contracts import CHAMPION, PredictionEvent
from nicheloop.driftlog import DriftLog, DriftWindow
from nicheloop.errors import Conflict, NotReady
from nicheloop.model import build_model
from nicheloop.registry import MANIFEST, STOPGAP_OF, Registry
from nicheloop.settings import Settings
from nicheloop.store import Store
from training.adapt import batch_norm_layers, make_stopgap, recalibrated
from training.data import Example
from training.evaluate import evaluate


def _images(n: int, level: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(np.clip(rng.normal(level, 20, (32, 32, 3)), 0, 255).astype(np.uint8))
        for _ in range(n)
    ]


def test_recalibration_moves_the_statistics_keeps_the_weights_and_leaves_the_original_alone() -> None:
    model = build_model("tf_efficientnet_lite0", ["a", "b"], 32, weights="none")
    model.extra["temperature"] = 0.7
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    dark = recalibrated(model, _images(64, 40, 0))
    bright = recalibrated(model, _images(64, 200, 1))
    first = batch_norm_layers(dark.net)[0]
    assert not torch.allclose(first.running_mean, batch_norm_layers(bright.net)[0].running_mean)
    assert not dark.net.training and not first.training
    assert dark.extra["temperature"] == 0.7
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for k, v in dark.net.state_dict().items():
        if not k.endswith(stats):
            assert torch.equal(v, before[k]), k  # weights untouched
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, before[k]), k  # the champion is not changed
    # the first layer's mean is the mean of its inputs over the images (cumulative, not exponential)
    x = dark.preprocess(_images(64, 40, 0))
    with torch.no_grad():
        pre = dark.net.conv_stem(x)
    assert torch.allclose(first.running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-4)


def test_too_few_images_are_refused() -> None:
    model = build_model("tf_efficientnet_lite0", ["a", "b"], 32, weights="none")
    with pytest.raises(ValueError, match="at least 32"):
        recalibrated(model, _images(5, 100, 0))


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_a_stopgap_is_made_from_images_since_the_input_alarm_and_registered_with_its_lineage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a real (SQLite) MLflow and store: no input alarm, no stopgap; with one, the champion's
    statistics move to the images it answered since, the result is measured on its held-out labels
    and registered as ``stopgap_of`` it with its manifest; it starts no cooldown; one per champion."""
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts land under the working directory
    settings = Settings(
        home=tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", image_size=32
    )
    store, blobs = Store(settings.db_url), BlobStore(str(settings.blob_dir))
    registry = Registry(settings.tracking_uri, settings.model_name)
    held = [(blobs.put(_png(img)), "a" if i % 2 else "b") for i, img in enumerate(_images(8, 120, 2))]
    manifest = json.dumps({"train": [], "holdout": [list(h) for h in held]})
    model = build_model("tf_efficientnet_lite0", ["a", "b"], 32, weights="none")
    _, reference = evaluate(model, blobs, [Example(sha, label) for sha, label in held])
    champion = registry.register(
        model, reference, params={}, metrics={"holdout_accuracy": 0.5}, lineage={"parent_version": "none"},
        alias=CHAMPION, artifacts={MANIFEST: manifest},
    )  # fmt: skip
    with pytest.raises(NotReady, match="no image or embedding alarm"):
        make_stopgap(settings, images=64)
    alarm = datetime(2026, 12, 4, 12, tzinfo=UTC)
    for i, img in enumerate(_images(40, 30, 3)):  # a darker camera, in the window that raised it
        store.add_prediction(
            PredictionEvent(
                prediction_id=f"p{i}", model_name="m", model_version=champion.version, label="a",
                probs=[0.5, 0.5], class_names=["a", "b"], uncertainty=0.5, embedding=[0.0],
                image_sha256=blobs.put(_png(img)), created_at=alarm - timedelta(seconds=i + 1),
            )
        )  # fmt: skip
    DriftLog(store).record(
        [
            DriftWindow(
                model_version=champion.version, monitor="image", feed="inputs", status="ok", n=40,
                alpha=0.01, drifted=True, alarm=True, change="raised", evaluated_at=alarm,
                started_at=alarm - timedelta(seconds=60),
            )
        ]
    )  # fmt: skip
    made = make_stopgap(settings, images=64)
    tags = made.version.tags
    assert tags[STOPGAP_OF] == tags["parent_version"] == champion.version and tags["stopgap_images"] == "40"
    assert registry.artifact_text(made.version.run_id, MANIFEST) == manifest
    assert made.metrics["stopgap_images"] == 40 and 0 <= made.metrics["holdout_accuracy"] <= 1
    assert made.metrics["parent_holdout_accuracy"] == 0.5
    stats = batch_norm_layers(registry.load(made.version.version).model.net)[0].running_mean
    assert not torch.allclose(stats, batch_norm_layers(model.net)[0].running_mean)
    assert registry.stopgap_of(champion.version) == made.version
    assert registry.newest_at() == champion.created_at  # a stopgap starts no cooldown
    assert registry.resolve(CHAMPION).version == champion.version  # it serves only through a rollout
    with pytest.raises(Conflict, match="already"):
        make_stopgap(settings, images=64)
