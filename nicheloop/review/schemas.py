"""The review API's bodies: a leased task, a label, a skip, the queue's figures."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class ReviewTask(BaseModel):
    """A claimed review item: label it (or skip it) with its ``lease_token`` before ``lease_expires_at``."""

    task_id: int
    prediction_id: str
    predicted_label: str
    uncertainty: float
    priority: float
    class_names: list[str]
    image_url: str
    lease_token: str
    lease_expires_at: datetime


class ReviewLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(min_length=1, max_length=128)
    lease_token: str = Field(min_length=1, max_length=64)


class ReviewSkip(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lease_token: str = Field(min_length=1, max_length=64)


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
    budget: ReviewBudget
    lease_s: float
