"""Serving faults a model version can be registered with, for game days and the rollout benchmark: a
share of its calls fail, a share take longer. They travel in the version's metadata
(``extra["serving_fault"]``), so a faulty candidate misbehaves wherever it is served and no setting
of the stack changes; a version without one serves normally.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import asdict, dataclass

from nicheloop.errors import InvalidInput, ModelFailed
from nicheloop.model import NicheModel

KEY = "serving_fault"


@dataclass(frozen=True)
class ServingFault:
    """``error_rate`` of the calls fail (:class:`~nicheloop.errors.ModelFailed`); ``slow_share`` of
    them answer ``slow_ms`` late."""

    error_rate: float = 0.0
    slow_share: float = 0.0
    slow_ms: float = 0.0

    def __post_init__(self) -> None:
        if not (0 <= self.error_rate <= 1 and 0 <= self.slow_share <= 1 and self.slow_ms >= 0):
            raise InvalidInput(f"a serving fault needs shares in [0, 1] and slow_ms >= 0, got {self}")

    @classmethod
    def of(cls, model: NicheModel | None) -> ServingFault | None:
        """The fault ``model`` was registered with, if any."""
        declared = None if model is None else model.extra.get(KEY)
        return None if not declared else cls(**declared)

    def declare(self, model: NicheModel) -> NicheModel:
        """``model`` with this fault in its metadata (register it to get a misbehaving version)."""
        model.extra[KEY] = asdict(self)
        return model

    async def strike(self, rng: random.Random) -> None:
        """After a call's answer is ready: wait, fail, or neither, as the fault's shares say.

        Raises:
            ModelFailed: this call drew a failure.
        """
        if rng.random() < self.slow_share:
            await asyncio.sleep(self.slow_ms / 1000)
        if rng.random() < self.error_rate:
            raise ModelFailed(f"this version is registered to fail {self.error_rate:.0%} of its calls")
