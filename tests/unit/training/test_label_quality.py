import numpy as np
import pytest

from training.label_quality import confident_joint, out_of_sample_probs, suspected_errors


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


def test_a_class_rarer_than_the_folds_still_gets_probabilities() -> None:
    features, truth = _blobs(7, n=200, k=3)
    truth[:2] = 3  # two examples of a fourth class
    probs = out_of_sample_probs(np.vstack([features]), truth, 4, folds=5)
    assert probs.shape == (200, 4) and np.allclose(probs.sum(axis=1), 1.0)
