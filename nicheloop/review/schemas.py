"""The review API's bodies: a leased task, a label, a skip, the queue's figures."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class SimilarImage(BaseModel):
    """An already-labeled image near a review item in the model's embedding space."""

    image_url: str
    label: str
    similarity: float = Field(description="Cosine similarity of the centred embeddings (1: the same).")


class ReviewTask(BaseModel):
    """A claimed review item: label it (or skip it) with its ``lease_token`` before ``lease_expires_at``."""

    task_id: int
    prediction_id: str
    predicted_label: str
    uncertainty: float
    priority: float
    class_names: list[str]
    probs: list[float] = Field(description="The served model's probabilities, in class_names order.")
    why: str = Field(description="What queued it: the model's doubt, or an image unlike those labeled.")
    image_url: str
    lease_token: str
    lease_expires_at: datetime
    similar: list[SimilarImage] = Field(
        default_factory=list, description="The nearest labeled images when it was queued, nearest first."
    )


class ReviewLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(min_length=1, max_length=128)
    lease_token: str = Field(min_length=1, max_length=64)


class ReviewSkip(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lease_token: str = Field(min_length=1, max_length=64)
    reason: str = Field("", max_length=200, description='Why: "unsure", "not a defect image", ...')


class ReviewLease(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lease_token: str = Field(min_length=1, max_length=64)


class LeaseRenewed(BaseModel):
    task_id: int
    lease_expires_at: datetime


class ReviewBudget(BaseModel):
    per_hour: int
    per_day: int
    left_hour: int
    left_day: int
    per_reviewer_hour: int
    per_reviewer_day: int


class ReviewStats(BaseModel):
    """``GET /v1/review/stats``: queue depth, throughput and budget left."""

    queued: int
    in_review: int
    done: int
    skipped: int
    expired: int
    oldest_queued_age_s: float | None
    labeled_last_hour: int
    labeled_last_day: int
    median_seconds_per_label: float | None
    skips: int = 0  # every skip so far (an item skipped twice counts twice)
    skip_rate: float | None = None  # skips over skips and labels
    lapsed_leases: int = 0  # claimed items whose lease ran out (offered again)
    budget: ReviewBudget
    lease_s: float


class Whoami(BaseModel):
    """``GET /v1/whoami``: the caller the credential names."""

    name: str
    role: str
