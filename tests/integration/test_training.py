"""Training against the real parts: Ray Train (a worker killed and resumed), SimSiam pretraining on
Ray, and the whole continual pipeline registering versions with lineage in MLflow."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import ray
import torch

from nicheloop.blobs import BlobStore, sha256_hex
from nicheloop.contracts import CANDIDATE, CHAMPION, FeedbackEvent, PredictionEvent
from nicheloop.driftlog import DriftLog, DriftWindow
from nicheloop.errors import InvalidInput
from nicheloop.images import decode_image
from nicheloop.model import build_model
from nicheloop.pixels import to_pixels
from nicheloop.reference import MIN_ROWS
from nicheloop.registry import MANIFEST, WORLD_SINCE, Registry
from nicheloop.rollouts import Rollouts
from nicheloop.settings import Settings, settings_env
from nicheloop.store import Store
from nicheloop.synthetic import Shift, write_image_folder
from rollout.promote import promote
from services.inference import ModelSlot, Pixels, recorded_champion
from tests.integration import worker_faults
from tests.integration.worker_faults import DieOnce
from training.compress import CompressConfig, compress
from training.config import TrainConfig, load_recipe
from training.data import Example, parse_manifest, read_image_folder, split_validation
from training.distributed import PROGRESS_FILE, fit
from training.evaluate import predict_all
from training.finetune import bootstrap, start_model, train
from training.pretrain import usable_images

ray.cloudpickle.register_pickle_by_value(worker_faults)  # Ray's workers cannot import tests

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def on_ray() -> Iterator[None]:
    """A local Ray instance (or the cluster an earlier test connected to)."""
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("train-home")
    return Settings(
        home=home,
        mlflow_tracking_uri=f"sqlite:///{home}/mlflow.db",
        backbone="test_resnet",
        image_size=32,
        model_name="train-it",
    )


def _labeled(tmp_path: Path, per_class: int, seed: int) -> tuple[BlobStore, list[Example]]:
    """Generated images of every class, stored in a blob store under ``tmp_path``."""
    blobs = BlobStore(str(tmp_path / "blobs"))
    return blobs, [
        Example(blobs.put(d), lbl)
        for d, lbl in read_image_folder(write_image_folder(tmp_path / "imgs", per_class, seed=seed, size=32))
    ]


def test_a_killed_worker_resumes_from_its_last_epoch_checkpoint(on_ray: None, tmp_path: Path) -> None:
    _, examples = _labeled(tmp_path, 8, seed=0)
    train_ex, val = split_validation(examples, 0.25)
    model = build_model("test_resnet", sorted({e.label for e in examples}), 32)
    cfg = TrainConfig(epochs=4, batch_size=8, max_failures=1)
    model, history = fit(
        model,
        train_ex,
        val,
        str(tmp_path / "blobs"),
        cfg,
        tmp_path / "ray",
        "resume",
        epoch_hook=DieOnce(2, tmp_path / "killed"),
    )
    assert (tmp_path / "killed").read_text() == "2"  # the worker really died at the start of epoch 2
    assert [h["epoch"] for h in history] == [0.0, 1.0, 2.0, 3.0]  # each epoch trained once, none lost
    reports = [json.loads(x) for x in (tmp_path / "ray" / "resume" / PROGRESS_FILE).read_text().splitlines()]
    # resumed from the last checkpoint the controller had registered (epoch 1's: the worker died once it was)
    assert [(r["epoch"], r["resumed_from_epoch"]) for r in reports] == [(0, 0), (1, 0), (2, 2), (3, 2)]
    assert all(r["device"] == "cpu" for r in reports)
    assert all(
        r["epoch_s"] > 0 and r["checkpoint_s"] > 0 for r in reports
    )  # compute, then the write, timed apart
    # the training worker runs at this process's niceness, not at the 15 Ray gives its workers
    assert all(r["niceness"] == os.nice(0) for r in reports)
    assert all(torch.isfinite(p).all() for p in model.net.parameters())
    # each epoch's state was written straight into the run's directory, and Ray Train kept the last two
    kept = sorted(p.name for p in (tmp_path / "ray" / "resume").glob("checkpoint_*") if p.is_dir())
    assert kept == ["checkpoint_epoch_0002", "checkpoint_epoch_0003"]


def test_two_workers_train_with_ddp_on_disjoint_shares(on_ray: None, tmp_path: Path) -> None:
    blobs, examples = _labeled(tmp_path, 9, seed=1)
    train_ex, val = split_validation(examples, 0.3)
    model = build_model("test_resnet", sorted({e.label for e in examples}), 32)
    cfg = TrainConfig(epochs=2, batch_size=4, num_workers=2, class_balance="none", min_epoch_images=0)
    model, history = fit(model, train_ex, val, str(tmp_path / "blobs"), cfg, tmp_path / "ray", "ddp")
    reports = [json.loads(x) for x in (tmp_path / "ray" / "ddp" / PROGRESS_FILE).read_text().splitlines()]
    assert [r["world"] for r in reports] == [2.0, 2.0]
    # each rank trained on its own half and the sums were all-reduced: every image counted once
    assert all(h["train_images"] == len(train_ex) - len(train_ex) % 2 for h in history)
    assert all(h["val_images"] == len(val) for h in history)
    # the reduced validation accuracy is what the returned (best-epoch) weights score in one process
    best = min(history, key=lambda h: h["val_loss"])
    preds = predict_all(model, blobs, val)
    assert best["val_accuracy"] == pytest.approx(float((preds.logits.argmax(1) == preds.y).mean()))


def test_without_failures_to_spare_a_dead_worker_fails_the_run(on_ray: None, tmp_path: Path) -> None:
    _, examples = _labeled(tmp_path, 3, seed=0)
    model = build_model("test_resnet", sorted({e.label for e in examples}), 32)
    with pytest.raises(Exception, match="(?i)fail|died|error"):
        fit(
            model,
            examples,
            [],
            str(tmp_path / "blobs"),
            TrainConfig(epochs=2, batch_size=4, max_failures=0),
            tmp_path / "ray",
            "nofail",
            epoch_hook=DieOnce(1, tmp_path / "killed"),
        )


def test_pretrain_then_bootstrap_then_continual_train_with_lineage(
    on_ray: None, settings: Settings, tmp_path: Path
) -> None:
    seed = read_image_folder(write_image_folder(tmp_path / "seed", 16, seed=0, size=32))
    blobs = BlobStore(str(settings.blob_dir))
    ckpt = tmp_path / "ssl.pt"
    # `nicheloop pretrain` as an operator runs it: the images go into the blob store, SimSiam runs on Ray
    env = {
        **os.environ,
        **settings_env(settings),
        "NICHELOOP_RAY_ADDRESS": ray.get_runtime_context().gcs_address,
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "pretrain",
            "--data",
            str(tmp_path / "seed"),
            "--backbone",
            "test_resnet",
            "--weights",
            "none",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--out",
            str(ckpt),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pretrain (SimSiam)" in out.stderr and "epoch 2/2" in out.stderr  # the progress bar, on stderr
    ssl = json.loads(out.stdout.strip().splitlines()[-1])
    assert ssl["checkpoint"] == str(ckpt) and ckpt.is_file() and ssl["epoch"] == 1.0
    assert ssl["images"] == len(usable_images(blobs)) == len({sha256_hex(data) for data, _ in seed})

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"weights: file:{ckpt}\nepochs: 2\nbatch_size: 8\nfreeze: gradual\nlayer_decay: 0.7\n"
        "critical_classes: [scratches]\n"
    )
    first = bootstrap(settings, seed, load_recipe(recipe))
    registry = Registry(settings.tracking_uri, settings.model_name)
    champion = registry.load(first.version.version)
    tags = first.version.tags
    assert (
        tags["parent_version"] == "none"
        and tags["weights"] == f"file:{ckpt}"
        and len(tags["code_version"]) >= 7
    )
    assert json.loads(tags["train_config"])["freeze"] == "gradual"
    # lineage names the starting weights: this checkpoint's bytes, and where its pretraining began
    start = json.loads(tags["start_weights"])
    assert start["source"] == "file" and start["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert start["pretrained_from"] == {"source": "none", "backbone": "test_resnet"}
    for key in (
        "holdout_accuracy",
        "holdout_macro_f1",
        "holdout_ece",
        "holdout_ece_uncalibrated",
        "holdout_precision_at_recall_scratches",
        "holdout_recall_crazing",
        "holdout_temperature",
    ):
        assert key in first.metrics, key
    assert champion.model.temperature == pytest.approx(first.metrics["holdout_temperature"])
    assert first.metrics["calibration_examples"] >= 2 and "calibration_on_selection" in first.metrics
    assert load_recipe(_artifact(registry, first, "recipe.yaml")) == load_recipe(recipe)
    confusion = json.loads(registry.artifact_text(first.version.run_id, "confusion_matrix.json") or "{}")
    assert sum(map(sum, confusion["matrix"])) == first.metrics["holdout_n"]
    manifest = json.loads(registry.artifact_text(first.version.run_id, MANIFEST) or "{}")
    assert manifest["digest"] == tags["snapshot_digest"]

    # the recipe may start from a registered version instead of a file
    same = start_model(settings, TrainConfig(weights="mlflow:@champion"), champion.model.class_names)
    body = [k for k in same.net.state_dict() if not k.startswith("fc.")]
    assert all(torch.equal(same.net.state_dict()[k], champion.model.net.state_dict()[k]) for k in body)

    # new labels arrive from a shifted line: a continual fine-tune with replay, forgetting reported
    store = Store(settings.db_url)
    shifted = read_image_folder(
        write_image_folder(
            tmp_path / "new", 6, seed=5, size=32, shift=Shift(blur_radius=1.0, brightness=-0.2)
        )
    )
    for data, label in shifted:
        store.add_seed_example(blobs.put(data), label)
    store.add_seed_example(blobs.put(shifted[0][0] + b"forged"), "rust")  # not a class: left out
    # the champion answered them too, users labeled them alike, and an image alarm holds since: the
    # held-out ones are the world the next version is for
    began = datetime.now(UTC) - timedelta(seconds=5)
    classes = champion.model.class_names
    for i, (data, label) in enumerate(shifted):
        pid = f"shifted-{i}"
        store.add_prediction(
            PredictionEvent(
                prediction_id=pid, model_name=settings.model_name, model_version=first.version.version,
                label=classes[0], probs=[1.0 / len(classes)] * len(classes), class_names=list(classes),
                uncertainty=0.5, embedding=[0.0], image_sha256=sha256_hex(data),
            )
        )  # fmt: skip
        store.add_feedback(FeedbackEvent(prediction_id=pid, label=label))
    DriftLog(store).record(
        [
            DriftWindow(
                model_version=first.version.version, monitor="image", feed="inputs", status="ok",
                n=len(shifted), alpha=0.01, drifted=True, alarm=True, change="raised",
                started_at=began, ended_at=datetime.now(UTC),
            )
        ]
    )  # fmt: skip
    world = {sha256_hex(data) for data, _ in shifted if store.is_holdout(sha256_hex(data))}
    second = train(settings, TrainConfig(epochs=2, batch_size=8, replay_per_class=3))
    m = second.metrics
    assert world and m["reference_world_images"] == len(world)
    # it was trained for the world that began with the alarm's window, on that world's labels
    assert float(second.version.tags[WORLD_SINCE]) == pytest.approx(began.timestamp(), abs=1e-3)
    assert len(world) <= m["world_labels"] <= len(shifted)
    # fewer than MIN_ROWS of the alarm's world were held out: the reference is not cut to them (the
    # monitors would be blind) but is every held-out row in the snapshot's class mix, which on a
    # hold-out this small may be fewer rows than the world has (the cut itself: unit tests)
    assert len(world) < MIN_ROWS and 0 < m["reference_rows"] <= m["holdout_n"]
    assert m["labels_left_out_unknown_class"] == 1
    assert second.version.tags["parent_version"] == first.version.version
    assert json.loads(second.version.tags["start_weights"]) == {
        "source": "mlflow",
        "version": first.version.version,
        "origin": start,
    }
    # the label gate judged the labels on the champion's embeddings; what it held back is in the manifest
    gated = parse_manifest(registry.artifact_text(second.version.run_id, MANIFEST) or "")
    assert {"label_gate_judged", "label_gate_held_back"} <= set(m)
    assert len(gated.held_back) == m["label_gate_held_back"] <= 0.2 * m["label_gate_judged"]
    held = {h.image_sha256 for h in gated.held_back}
    new = {sha256_hex(data) for data, _ in shifted if not store.is_holdout(sha256_hex(data))}
    assert m["new_examples"] == len(new - held)
    assert m["replayed_examples"] == 3 * 4
    assert {"forgetting_points", "old_data_accuracy_before", "old_data_accuracy_after"} <= set(m)
    assert m["forgetting_points"] == pytest.approx(
        100 * (m["old_data_accuracy_before"] - m["old_data_accuracy_after"])
    )
    assert registry.run_metrics(second.version.run_id)["forgetting_points"] == pytest.approx(
        m["forgetting_points"]
    )
    # the offline gate's paired test: the accuracies differ by the images only one of them got right
    n = m["holdout_n"]
    assert m["holdout_accuracy"] - m["parent_holdout_accuracy"] == pytest.approx(
        (m["holdout_candidate_only"] - m["holdout_parent_only"]) / n
    )

    with pytest.raises(InvalidInput, match="no labels are new"):
        registry.set_alias("champion", second.version.version)
        train(settings, TrainConfig(epochs=1))


def test_compress_the_champion_promote_serve_it_and_train_on_from_it(on_ray: None, tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    settings = Settings(
        home=tmp_path / "home",
        mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        backbone="test_resnet",
        image_size=32,
        model_name="compress-it",
    )
    seed = read_image_folder(write_image_folder(tmp_path / "seed", 16, seed=0, size=32))
    first = bootstrap(settings, seed, TrainConfig(weights="none", epochs=2, batch_size=8)).version
    registry = Registry(settings.tracking_uri, settings.model_name)

    # `nicheloop compress` as an operator runs it: int8, its figures and the verdicts promote would give
    out = subprocess.run(
        [sys.executable, "-m", "cli", "compress", "--calibration-images", "24"],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    said = json.loads(out.stdout.strip().splitlines()[-1])
    int8 = registry.version(said["version"])
    assert int8.tags["compressed_from"] == int8.tags["parent_version"] == first.version
    assert int8.tags["precision"] == "int8" and CANDIDATE in int8.aliases
    assert int8.tags["snapshot_digest"] == first.tags["snapshot_digest"]  # the data its weights learnt from
    assert said["calibration_images"] == 24 and said["img_per_s"] > 0 and said["parent_img_per_s"] > 0
    metrics = registry.run_metrics(int8.run_id)
    assert metrics["accuracy_drop_points"] == pytest.approx(
        100 * (metrics["parent_holdout_accuracy"] - metrics["holdout_accuracy"])
    )
    fidelity = next(g for g in said["gates"] if g["gate"] == "compression_fidelity")
    within = metrics["accuracy_drop_points"] <= 0.5 and metrics["ece_increase"] <= 0.01
    assert fidelity["verdict"] == ("pass" if within else "fail")
    assert registry.artifact_text(int8.run_id, MANIFEST) == registry.artifact_text(first.run_id, MANIFEST)
    assert registry.resolve(CHAMPION).version == first.version  # compressing promotes nothing

    # the unquantised graph computes what the network does: it passes the default gate for real
    fp32 = compress(settings, CompressConfig(precision="fp32"), version=first.version)
    assert abs(fp32.metrics["accuracy_drop_points"]) < 1e-9 and abs(fp32.metrics["ece_increase"]) < 1e-4
    rollouts = Rollouts(Store(settings.db_url))
    assert rollouts.champion() == first.version  # bootstrap recorded its champion
    promoted = promote(registry, rollouts, actor="test")
    assert promoted.promoted == fp32.version.version
    with pytest.raises(InvalidInput, match=f"already compressed .*compress version {first.version} instead"):
        compress(settings, CompressConfig())

    # serving loads it and answers with it
    champion = ModelSlot(registry, recorded_champion(rollouts, registry))
    assert champion.reload_if_changed() and champion.model is not None and champion.model.runtime is not None
    spec = champion.model.input_spec
    images = [decode_image(data, 1 << 24, 1 << 24) for data, _ in seed[:3]]
    outputs = champion.infer([Pixels(to_pixels(img.convert("RGB"), spec), spec.key) for img in images])
    assert {o.model_version for o in outputs} == {fp32.version.version}
    assert all(abs(sum(o.probs) - 1) < 1e-5 for o in outputs)

    # new labels: training continues from the full-precision weights; the candidate is a plain network
    store, blobs = Store(settings.db_url), BlobStore(str(settings.blob_dir))
    for data, label in read_image_folder(write_image_folder(tmp_path / "new", 6, seed=7, size=32)):
        store.add_seed_example(blobs.put(data), label)
    nxt = train(settings, TrainConfig(epochs=1, batch_size=8, replay_per_class=2))
    assert nxt.version.tags["parent_version"] == fp32.version.version
    assert "compressed_from" not in nxt.version.tags
    assert json.loads(nxt.version.tags["start_weights"])["version"] == fp32.version.version
    retrained = registry.load(nxt.version.version).model
    assert retrained.runtime is None and "compression" not in retrained.extra


def _artifact(registry: Registry, result, name: str) -> Path:  # type: ignore[no-untyped-def]
    text = registry.artifact_text(result.version.run_id, name)
    assert text is not None, name
    path = Path(registry.tracking_uri.split("///", 1)[1]).parent / name
    path.write_text(text)
    return path
