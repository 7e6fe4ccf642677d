"""Which start suits this domain, answered on the user's own images.

Three starts are fine-tuned with the same recipe at a few label budgets and scored on the same
held-out test images: ``imagenet`` (the generalist ImageNet weights as installed), ``imagenet_ssl``
(those weights after self-supervised pretraining continued on the domain's unlabeled images) and
``random``. A paired bootstrap over test images (and over repeats, when there are several) gives
each figure an interval and decides: the cheapest start within ``margin`` of the best one wins
each bootstrap draw, and the start that wins most draws is advised, with that share as how sure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from nicheloop.blobs import BlobStore
from nicheloop.errors import InvalidInput
from nicheloop.model import NicheModel, build_model
from training.config import TrainConfig
from training.data import Example, split_validation
from training.engine import fit_local, local_job
from training.evaluate import predict_all
from training.pretrain import PretrainConfig, pretrain_local
from training.probe import probe_head

log = logging.getLogger(__name__)

# cheapest first: ImageNet weights cost nothing; in-domain pretraining costs a run
STARTS = ("imagenet", "random", "imagenet_ssl")
WEIGHTS = {"imagenet": "package", "random": "none"}
Step = Callable[[str], None]


class AdviceConfig(BaseModel):
    """What the comparison runs: starts, label budgets, the fine-tuning and pretraining effort."""

    model_config = ConfigDict(extra="forbid")
    backbone: str = "tf_efficientnet_lite0"
    image_size: int = Field(128, ge=16)
    budgets: tuple[int, ...] = Field((5, 10, 25), description="Labels per class each start is tuned on.")
    starts: tuple[str, ...] = STARTS
    test_per_class: int = Field(
        100, ge=2, description="Held-out test images per class; the rest is the labeled pool."
    )
    repeats: int = Field(1, ge=1, description="Label draws per budget; the interval covers them too.")
    recipe: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            epochs=15, lr_head=3e-3, lr_backbone=1e-3, augment=0.6, dropout=0.1
        )
    )
    ssl: PretrainConfig = Field(default_factory=lambda: PretrainConfig(epochs=10, batch_size=64, lr=0.02))
    margin: float = Field(0.01, ge=0, description="Accuracy within which the cheaper start is preferred.")
    rounds: int = Field(1000, ge=100, description="Bootstrap draws.")
    seed: int = 0


@dataclass(frozen=True)
class Split:
    """Labeled images per class to draw budgets from, and the test images nothing else sees."""

    pool: dict[str, list[Example]]
    test: list[Example]

    @property
    def classes(self) -> list[str]:
        return sorted(self.pool)

    def take(self, per_class: int, offset: int = 0) -> list[Example]:
        """The first ``per_class`` pool images of every class, after ``offset``."""
        return [e for members in self.pool.values() for e in members[offset : offset + per_class]]


def split_labeled(items: list[tuple[str, str]], test_per_class: int, seed: int) -> Split:
    """Shuffle each class once; its first ``test_per_class`` images are the test set, the rest the pool."""
    rng = np.random.default_rng(seed)
    pool: dict[str, list[Example]] = {}
    test: list[Example] = []
    for label in sorted({lbl for _, lbl in items}):
        members = [Example(sha, lbl) for sha, lbl in items if lbl == label]
        members = [members[i] for i in rng.permutation(len(members))]
        test += members[:test_per_class]
        pool[label] = members[test_per_class:]
    return Split(pool, test)


def finetune(
    split: Split,
    blobs: BlobStore,
    train: list[Example],
    cfg: TrainConfig,
    *,
    backbone: str,
    image_size: int,
    device: torch.device,
    start_state: dict[str, torch.Tensor] | None = None,
) -> tuple[NicheModel, list[Example]]:
    """Fine-tune in this process from ``cfg.weights`` (or ``start_state``), the fresh head first probed
    if the recipe says so; returns the model and the labels that picked its epoch."""
    model = build_model(backbone, split.classes, image_size, weights=cfg.weights, dropout=cfg.dropout)
    tr, val = split_validation(train, cfg.val_fraction, cfg.seed)
    if start_state is not None:
        model.net.load_state_dict(start_state)
    elif cfg.head_init == "probe":
        probe_head(model, blobs, tr, weight_decay=cfg.probe_weight_decay)
    fit_local(local_job(model, blobs, tr, val, cfg, device), cfg)
    model.net.eval()
    return model, val


def correct(model: NicheModel, blobs: BlobStore, test: list[Example]) -> np.ndarray:
    """(N,) booleans: which test images the model gets right."""
    preds = predict_all(model, blobs, test, batch_size=256)
    return np.asarray(preds.logits.argmax(1) == preds.y)


def bootstrap_draws(hits: dict[str, np.ndarray], rounds: int, seed: int) -> dict[str, np.ndarray]:
    """Accuracy per bootstrap draw for each run; ``hits[run]`` is (repeats, N) correctness on the same
    N test images, so every run is resampled with the same images (a paired bootstrap)."""
    rng = np.random.default_rng(seed)
    n = next(iter(hits.values())).shape[1]
    images = rng.integers(0, n, (rounds, n))
    out = {}
    for run, h in hits.items():
        reps = rng.integers(0, h.shape[0], rounds)
        out[run] = h[reps[:, None], images].mean(axis=1)
    return out


def interval(values: np.ndarray) -> list[float]:
    """The 95% percentile interval."""
    return [round(float(q), 4) for q in np.percentile(values, [2.5, 97.5])]


def decide(draws: dict[str, np.ndarray], starts: tuple[str, ...], margin: float) -> tuple[str, float]:
    """Per draw, the cheapest start within ``margin`` of that draw's best wins; returns the start that
    wins most draws and the share it wins. ``draws[start]`` is accuracy averaged over budgets."""
    table = np.stack([draws[s] for s in starts])  # (starts, rounds), cheapest first
    within = table >= table.max(axis=0) - margin - 1e-12
    winners = within.argmax(axis=0)  # first (cheapest) start within the margin
    counts = np.bincount(winners, minlength=len(starts))
    best = int(counts.argmax())
    return starts[best], float(counts[best] / table.shape[1])


def _words(start: str, share: float, gain: list[float] | None) -> str:
    sure = "sure" if share >= 0.95 else "fairly sure" if share >= 0.8 else "unsure"
    lines = {
        "imagenet": "fine-tune the generalist ImageNet weights (weights: package)",
        "imagenet_ssl": "pretrain in-domain first (nicheloop pretrain), then fine-tune (weights: file:CKPT)",
        "random": "random weights did as well here: the domain is far from ImageNet; "
        "pretrain in-domain longer",
    }
    text = f"{lines[start]}; {sure} ({share:.0%} of bootstrap draws)"
    if gain is not None:
        text += (
            f"; in-domain pretraining changed accuracy at the smallest budget by {gain[0]:+.3f} "
            f"[{gain[1]:+.3f}, {gain[2]:+.3f}]"
        )
    if sure == "unsure":
        text += "; the starts are within the noise of this test set: add labeled images or --repeats"
    return text


def summarise(hits: dict[tuple[str, int], np.ndarray], cfg: AdviceConfig) -> dict[str, Any]:
    """Accuracies with intervals, the in-domain gain per budget, and the advice."""
    keyed = {f"{s}@{b}": h for (s, b), h in hits.items()}
    draws = bootstrap_draws(keyed, cfg.rounds, cfg.seed)
    starts = tuple(s for s in STARTS if s in cfg.starts)
    accuracy = {s: {str(b): round(float(hits[s, b].mean()), 4) for b in cfg.budgets} for s in starts}
    ci = {s: {str(b): interval(draws[f"{s}@{b}"]) for b in cfg.budgets} for s in starts}
    gain: dict[str, list[float]] = {}
    if {"imagenet", "imagenet_ssl"} <= set(starts):
        for b in cfg.budgets:
            d = draws[f"imagenet_ssl@{b}"] - draws[f"imagenet@{b}"]
            mean = float(hits["imagenet_ssl", b].mean() - hits["imagenet", b].mean())
            gain[str(b)] = [round(mean, 4), *interval(d)]
    averaged = {s: np.mean([draws[f"{s}@{b}"] for b in cfg.budgets], axis=0) for s in starts}
    start, share = decide(averaged, starts, cfg.margin)
    first = gain.get(str(min(cfg.budgets)))
    return {
        "accuracy": accuracy,
        "accuracy_ci95": ci,
        "imagenet_ssl_minus_imagenet": gain,
        "advice": {"start": start, "confidence": round(share, 3), "says": _words(start, share, first)},
    }


def chart(report: dict[str, Any], path: Path) -> Path:
    """Accuracy against labels per class, one line per start, with 95% intervals (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for start, by_budget in report["accuracy"].items():
        xs = [int(b) for b in by_budget]
        ys = list(by_budget.values())
        lo = [y - report["accuracy_ci95"][start][b][0] for b, y in by_budget.items()]
        hi = [report["accuracy_ci95"][start][b][1] - y for b, y in by_budget.items()]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=start)
    ax.set(xlabel="labels per class", ylabel="test accuracy", xscale="log")
    ax.set_xticks([int(b) for b in next(iter(report["accuracy"].values()))])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_title(f"advised: {report['advice']['start']} ({report['advice']['confidence']:.0%} sure)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plan_steps(cfg: AdviceConfig) -> int:
    """How many progress steps :func:`advise` reports (pretraining epochs and fine-tunes)."""
    ssl = cfg.ssl.epochs if "imagenet_ssl" in cfg.starts else 0
    return ssl + len(cfg.starts) * len(cfg.budgets) * cfg.repeats


def advise(
    blobs: BlobStore,
    items: list[tuple[str, str]],
    unlabeled: list[str],
    cfg: AdviceConfig,
    out_dir: Path,
    *,
    device: torch.device,
    step: Step = lambda _: None,
) -> dict[str, Any]:
    """Run the comparison; writes ``advice.json`` and ``advice.png`` into ``out_dir``, returns the report.

    ``items`` are (blob digest, label) pairs; ``unlabeled`` extra digests for in-domain pretraining
    (the labeled pool is used unlabeled too; the test images never). ``step`` is called once per
    pretraining epoch and per fine-tune, with what just finished.

    Raises:
        InvalidInput: a class too small for the test set and the largest budget, or an unknown start.
    """
    unknown = set(cfg.starts) - set(STARTS)
    if unknown:
        raise InvalidInput(f"unknown starts {sorted(unknown)}; choose from {list(STARTS)}")
    split = split_labeled(items, cfg.test_per_class, cfg.seed)
    need = max(cfg.budgets) * cfg.repeats
    short = {c: len(m) for c, m in split.pool.items() if len(m) < need}
    if short:
        raise InvalidInput(
            f"classes {short} have fewer than {need} labeled images besides the {cfg.test_per_class} "
            "test images each; lower --test-per-class or the budgets, or label more"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = dict(WEIGHTS)
    if "imagenet_ssl" in cfg.starts:
        weights["imagenet_ssl"] = f"file:{_pretrain(blobs, split, unlabeled, cfg, out_dir, device, step)}"
    hits: dict[tuple[str, int], np.ndarray] = {}
    for start in cfg.starts:
        for budget in cfg.budgets:
            runs = []
            for r in range(cfg.repeats):
                recipe = cfg.recipe.model_copy(update={"weights": weights[start], "seed": cfg.seed + r})
                model, _ = finetune(
                    split,
                    blobs,
                    split.take(budget, offset=r * budget),
                    recipe,
                    backbone=cfg.backbone,
                    image_size=cfg.image_size,
                    device=device,
                )
                runs.append(correct(model, blobs, split.test))
                step(f"{start} @ {budget}/class: {runs[-1].mean():.3f}")
            hits[start, budget] = np.stack(runs)
    report = _report(summarise(hits, cfg), split, unlabeled, cfg)
    (out_dir / "advice.json").write_text(json.dumps(report, indent=2))
    chart(report, out_dir / "advice.png")
    return report


def _pretrain(
    blobs: BlobStore,
    split: Split,
    unlabeled: list[str],
    cfg: AdviceConfig,
    out_dir: Path,
    device: torch.device,
    step: Step,
) -> Path:
    """In-domain SimSiam from the ImageNet weights on the pool and the extra unlabeled images."""
    test = {e.image_sha256 for e in split.test}
    digests = sorted(({e.image_sha256 for m in split.pool.values() for e in m} | set(unlabeled)) - test)
    ssl = cfg.ssl.model_copy(
        update={
            "backbone": cfg.backbone,
            "image_size": cfg.image_size,
            "weights": "package",
            "seed": cfg.seed,
        }
    )
    ckpt = out_dir / "imagenet_ssl_backbone.pt"
    pretrain_local(
        blobs,
        digests,
        ssl,
        ckpt,
        device=device,
        on_epoch=lambda m: step(
            f"in-domain pretraining, epoch {int(m['epoch']) + 1}: loss {m['ssl_loss']:.3f}"
        ),
    )
    return ckpt


def _report(summary: dict[str, Any], split: Split, unlabeled: list[str], cfg: AdviceConfig) -> dict[str, Any]:
    return {
        **summary,
        "classes": split.classes,
        "test_images": len(split.test),
        "unlabeled_images": len({e.image_sha256 for m in split.pool.values() for e in m} | set(unlabeled)),
        "budgets": list(cfg.budgets),
        "repeats": cfg.repeats,
        "backbone": cfg.backbone,
        "image_size": cfg.image_size,
        "finetune_epochs": cfg.recipe.epochs,
        "ssl_epochs": cfg.ssl.epochs if "imagenet_ssl" in cfg.starts else 0,
    }
