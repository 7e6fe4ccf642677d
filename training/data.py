"""Datasets: ImageFolder directories, snapshots of the labeled store, torch datasets over blobs."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from nicheloop.blobs import BlobStore
from nicheloop.errors import InvalidInput
from nicheloop.images import IMAGE_STATS, decode_image, image_statistics
from nicheloop.store import Store

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
MAX_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Example:
    image_sha256: str
    label: str
    actor: str = ""  # who gave the label, where the store knows (not in the manifest or the digest)


@dataclass(frozen=True)
class HeldBack:
    """A label the store has that a training run did not take, and why (lineage)."""

    image_sha256: str
    label: str
    reason: str


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of labeled data: training and held-out examples, and a content hash."""

    train: tuple[Example, ...]
    holdout: tuple[Example, ...]
    excluded_actors: tuple[str, ...] = ()  # whose labels it leaves out (lineage)
    held_back: tuple[HeldBack, ...] = ()  # training labels a gate left out, with why (lineage)
    doubted: tuple[HeldBack, ...] = ()  # training labels a gate doubted but kept, with why (lineage)

    @property
    def digest(self) -> str:
        lines = [
            f"{side}:{e.image_sha256}:{e.label}"
            for side, part in (("t", self.train), ("h", self.holdout))
            for e in part
        ]
        return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()

    def within(self, classes: list[str]) -> tuple[Snapshot, dict[str, int]]:
        """This snapshot without the examples whose label is not one of ``classes`` (a forged or
        mistyped label must not stop training), and how many of each such label were left out."""
        known = set(classes)
        left_out = Counter(e.label for e in (*self.train, *self.holdout) if e.label not in known)
        if not left_out:
            return self, {}
        keep = lambda part: tuple(e for e in part if e.label in known)  # noqa: E731
        kept = replace(self, train=keep(self.train), holdout=keep(self.holdout))
        return kept, dict(left_out)

    def manifest(self) -> str:
        return json.dumps(
            {
                "digest": self.digest,
                "train": [[e.image_sha256, e.label] for e in self.train],
                "holdout": [[e.image_sha256, e.label] for e in self.holdout],
                "excluded_actors": list(self.excluded_actors),
                "held_back": [[h.image_sha256, h.label, h.reason] for h in self.held_back],
                "doubted": [[h.image_sha256, h.label, h.reason] for h in self.doubted],
            }
        )


def class_shares(snap: Snapshot, classes: list[str] | tuple[str, ...]) -> np.ndarray:
    """Each of ``classes``' share of every label in ``snap`` (both sides): the class mix the
    held-out side would have without the chance of its draw."""
    counts = Counter(e.label for e in (*snap.train, *snap.holdout))
    total = sum(counts[c] for c in classes)
    return np.array([counts[c] / total if total else 0.0 for c in classes])


def read_image_folder(root: Path) -> list[tuple[bytes, str]]:
    """(file bytes, class name) for every image under ``root/<class>/``.

    Raises:
        InvalidInput: if ``root`` has fewer than two class folders with images.
    """
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a directory; pass an ImageFolder root (<class>/<image>)")
    items = [
        (path.read_bytes(), cls.name)
        for cls in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(cls.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and path.stat().st_size <= MAX_FILE_BYTES
    ]
    if len({label for _, label in items}) < 2:
        raise InvalidInput(f"{root} needs at least two class folders with images")
    return items


def snapshot(store: Store) -> Snapshot:
    """Freeze the labeled store; the held-out side is fixed by image content (see store.is_holdout)."""
    rows = store.labeled_examples()
    train = tuple(Example(r.image_sha256, r.label, r.actor or "") for r in rows if not r.holdout)
    holdout = tuple(Example(r.image_sha256, r.label, r.actor or "") for r in rows if r.holdout)
    return Snapshot(train=train, holdout=holdout, excluded_actors=tuple(store.excluded_actors()))


class BlobImageDataset(Dataset):
    """Images from the blob store through a model's transform; yields (tensor, class index), and
    the image's statistics (the drift monitors' input features) when ``with_stats``."""

    def __init__(
        self,
        blobs: BlobStore,
        examples: list[Example] | tuple[Example, ...],
        class_names: list[str],
        transform: Any,
        max_pixels: int = 4096 * 4096,
        with_stats: bool = False,
    ) -> None:
        unknown = {e.label for e in examples} - set(class_names)
        if unknown:
            raise InvalidInput(f"labels {sorted(unknown)} are not classes of the model {class_names}")
        self.blobs, self.examples, self.transform, self.max_pixels = (
            blobs,
            list(examples),
            transform,
            max_pixels,
        )
        self.index = {c: i for i, c in enumerate(class_names)}
        self.with_stats = with_stats

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, torch.Tensor]:
        ex = self.examples[i]
        img = decode_image(self.blobs.get(ex.image_sha256), MAX_FILE_BYTES, self.max_pixels)
        if self.with_stats:
            stats = image_statistics(img)
            return self.transform(img), self.index[ex.label], torch.tensor([stats[k] for k in IMAGE_STATS])
        return self.transform(img), self.index[ex.label]


def _rank(seed: int, example: Example) -> str:
    return hashlib.sha256(f"{seed}:{example.image_sha256}".encode()).hexdigest()


def split_validation(
    examples: tuple[Example, ...] | list[Example], fraction: float, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """(train, validation): ``fraction`` of each class (classes with fewer than 3 labels stay whole),
    chosen by a seeded hash of the image, so the split is the same on every run and every worker."""
    train: list[Example] = []
    val: list[Example] = []
    for label in sorted({e.label for e in examples}):
        members = sorted((e for e in examples if e.label == label), key=lambda e: _rank(seed, e))
        k = int(round(fraction * len(members))) if len(members) >= 3 else 0
        val += members[:k]
        train += members[k:]
    return train, val


def replay_buffer(old: tuple[Example, ...] | list[Example], per_class: int, seed: int = 0) -> list[Example]:
    """Class-balanced replay: at most ``per_class`` of ``old`` for every class, chosen by a seeded
    hash of the image (stable: the same old examples are replayed run after run)."""
    out: list[Example] = []
    for label in sorted({e.label for e in old}):
        out += sorted((e for e in old if e.label == label), key=lambda e: _rank(seed, e))[:per_class]
    return out


def parse_manifest(text: str) -> Snapshot:
    """The :class:`Snapshot` a run's ``snapshot_manifest.json`` artifact describes.

    Raises:
        InvalidInput: if ``text`` is not such a manifest.
    """
    try:
        data = json.loads(text)
        return Snapshot(
            train=tuple(Example(s, lbl) for s, lbl in data["train"]),
            holdout=tuple(Example(s, lbl) for s, lbl in data["holdout"]),
            excluded_actors=tuple(data.get("excluded_actors", ())),
            held_back=tuple(HeldBack(*h) for h in data.get("held_back", ())),
            doubted=tuple(HeldBack(*h) for h in data.get("doubted", ())),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"not a snapshot manifest: {exc}") from exc
