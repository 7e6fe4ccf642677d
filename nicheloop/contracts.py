"""The contracts between stages: Kafka topics, event schemas and HTTP API schemas.

This module imports no torch, ray, kafka or mlflow: every stage can depend on it.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

PREDICTIONS_TOPIC = "nicheloop.predictions.v1"
FEEDBACK_TOPIC = "nicheloop.feedback.v1"
DEAD_LETTER_TOPIC = "nicheloop.deadletter.v1"
DRIFT_TOPIC = "nicheloop.drift.v1"
ROLLOUTS_TOPIC = "nicheloop.rollouts.v1"
DECISIONS_TOPIC = "nicheloop.decisions.v1"
ALL_TOPICS = (
    PREDICTIONS_TOPIC,
    FEEDBACK_TOPIC,
    DEAD_LETTER_TOPIC,
    DRIFT_TOPIC,
    ROLLOUTS_TOPIC,
    DECISIONS_TOPIC,
)
# A training run's progress: one JSON line per epoch in this file of the run's folder.
PROGRESS_FILE = "progress.jsonl"

# The input-drift features of an image, in the order monitors and references keep them
# (computed by nicheloop.images.image_statistics at the gateway and for each reference).
IMAGE_STATS = (
    "brightness",
    "contrast",
    "sharpness",
    "noise",
    "blockiness",
    "width",
    "height",
    "red_mean",
    "green_mean",
    "blue_mean",
    "red_std",
    "green_std",
    "blue_std",
)

CHAMPION = "champion"
CANDIDATE = "candidate"

FeedbackSource = Literal["user", "reviewer", "seed"]
Arm = Literal["champion", "candidate", "shadow"]  # which model of a rollout made a prediction


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


# What events carry, bounded as the store keeps it (PostgreSQL refuses NUL in text)
Text = Annotated[str, Field(max_length=100_000), AfterValidator(_no_nul)]
Name = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_no_nul)]
ShortId = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_no_nul)]
Version = Annotated[
    str,
    Field(
        pattern=r"^[0-9A-Za-z][0-9A-Za-z._-]{0,31}$",
        description="A registry version: it names folders (drift reports), so never a path.",
    ),
]


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(at: datetime) -> datetime:
    """``at`` with its time zone: SQLite hands datetimes back naive, and they were stored in UTC."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: int = 1


class PredictionEvent(_Event):
    """One answer of the inference endpoint. Kafka key: ``prediction_id``."""

    prediction_id: Name
    model_name: Name
    model_version: Version
    label: Name
    probs: list[float] = Field(description="Probabilities, in the order of class_names.")
    class_names: list[Name] = Field(min_length=1, max_length=10_000)
    uncertainty: float = Field(ge=0.0, le=1.0)
    embedding: list[float] = Field(description="Pre-logits features of the image.")
    early_embedding: list[float] = Field(
        default_factory=list,
        description="Pooled early-stage features (edges, textures) for the embedding drift monitor; "
        "empty from older gateways.",
    )
    image_sha256: ShortId
    image_stats: dict[str, float] = Field(
        default_factory=dict,
        description="Input-drift features of the image (IMAGE_STATS); empty from older gateways.",
    )
    arm: Arm = Field(
        "champion",
        description="Which model made it: the champion, the candidate answering its canary share, or "
        "the candidate in shadow (mirrored: never returned to the caller).",
    )
    paired_with: Name | None = Field(
        None,
        description="A shadow prediction's champion twin: the prediction_id the caller got (and labels).",
    )
    created_at: datetime = Field(default_factory=utcnow)

    @field_validator("probs", "embedding", "early_embedding")
    @classmethod
    def _finite(cls, values: list[float]) -> list[float]:
        # sum() runs in C, and a NaN or an infinity anywhere leaves the sum non-finite; only then
        # (or on an overflow of huge finite values) does the per-value check in Python run
        if not math.isfinite(sum(values)) and not all(math.isfinite(v) for v in values):
            raise ValueError("must hold finite numbers only")
        return values

    @field_validator("image_stats")
    @classmethod
    def _known_stats(cls, stats: dict[str, float]) -> dict[str, float]:
        if stats and set(stats) != set(IMAGE_STATS):
            raise ValueError(f"image_stats must have exactly the keys {list(IMAGE_STATS)}")
        cls._finite(list(stats.values()))
        return stats

    @model_validator(mode="after")
    def _one_probability_per_class(self) -> PredictionEvent:
        if len(self.probs) != len(self.class_names) or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(
                f"{len(self.probs)} probabilities for {len(self.class_names)} classes: need one per "
                "distinct class"
            )
        if self.label not in self.class_names:
            raise ValueError(f"label {self.label!r} is not one of class_names")
        return self


class FeedbackEvent(_Event):
    """A label for a prediction, from the calling app or a reviewer. Kafka key: ``prediction_id``."""

    feedback_id: ShortId = Field(default_factory=new_id)
    prediction_id: Name
    label: Name
    source: FeedbackSource = "user"
    actor: Name | None = Field(
        None, description="Who gave the label: the caller's key name; None from gateways before roles."
    )
    created_at: datetime = Field(default_factory=utcnow)


class DriftEvent(_Event):
    """A drift alarm of one monitor was raised or cleared. Kafka key: ``model_version:monitor``.

    Alarms have hysteresis: one shift gives one ``raised`` and, once traffic is calm again for
    several windows, one ``cleared``.
    """

    drift_id: ShortId = Field(default_factory=new_id)
    model_name: Name
    model_version: Version
    monitor: Name = Field(description="A registered drift monitor's name.")
    state: Literal["raised", "cleared"]
    p_value: float | None = Field(None, ge=0.0, le=1.0)
    score: float | None = None
    window_size: int = Field(ge=0)
    details: dict[str, float] = Field(default_factory=dict, description="Per-test p-values and figures.")
    report: str | None = Field(None, description="Path of the window's HTML report, when one was written.")
    created_at: datetime = Field(default_factory=utcnow)


class RolloutMoved(_Event):
    """A rollout changed state or share (the audit trail's line, on Kafka). Kafka key: the rollout id."""

    event_id: str = Field(default_factory=new_id)
    rollout_id: int
    model_name: str
    candidate: str
    champion: str
    from_state: str | None
    to_state: str
    from_share: float = Field(ge=0.0, le=1.0)
    to_share: float = Field(ge=0.0, le=1.0)
    actor: str
    reason: str
    revision: int = Field(ge=0)
    created_at: datetime = Field(default_factory=utcnow)


class PolicyDecided(_Event):
    """The retraining policy's verdict changed (``train`` or ``wait``, by which rule, why, on which
    figures). Kafka key: the champion's version."""

    decision_id: ShortId = Field(default_factory=new_id)
    model_name: Name
    champion: Version
    action: Literal["train", "wait"]
    rule: Name
    reason: str = Field(max_length=4000)
    figures: dict[str, float | int | bool] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)


class DeadLetter(_Event):
    """A record that could not be parsed or applied, with the reason."""

    topic: str
    partition: int
    offset: int
    key: str | None
    reason: str
    payload: str


class PredictResponse(BaseModel):
    prediction_id: str
    model_version: str
    label: str
    probs: dict[str, float]
    uncertainty: float


class PredictJSON(BaseModel):
    """JSON body of ``POST /v1/predict``: the image file's bytes, base64-encoded."""

    model_config = ConfigDict(extra="forbid")
    image_b64: str = Field(min_length=1)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prediction_id: str = Field(min_length=1, max_length=128)
    label: str = Field(min_length=1, max_length=128)
    source: Literal["user"] = "user"


class FeedbackAccepted(BaseModel):
    feedback_id: str
    prediction_id: str
    label: str
    source: FeedbackSource
