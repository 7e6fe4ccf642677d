"""Labeled examples whose digests say their class and order, for snapshot and fine-tuning tests."""

from training.data import Example


def labeled(per_class: dict[str, int], prefix: str = "") -> list[Example]:
    """``per_class[label]`` examples of each label, with distinct, readable stand-in digests."""
    return [
        Example(f"{prefix}{label}{i:04d}".ljust(64, "0")[:64], label)
        for label, n in per_class.items()
        for i in range(n)
    ]
