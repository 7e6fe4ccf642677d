"""A rollout plan: how a candidate goes from shadow through canary steps to champion, and what it must
show on the way. A YAML file of these keys (recipes/rollouts/*.yaml); every key has a default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nicheloop.yamlfile import load_yaml_model


class RolloutPlan(BaseModel):
    """Steps, the evidence each needs before the next, and the thresholds of the live gates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- steps --------------------------------------------------------------------------------
    shadow_share: float = Field(
        0.2, gt=0, le=1, description="Share of requests mirrored to the candidate in shadow (answers unused)."
    )
    steps: tuple[float, ...] = Field(
        (0.05, 0.25, 0.5), description="Canary shares of traffic, in order; then the candidate is champion."
    )
    min_step_s: float = Field(600.0, ge=0, description="Least time in shadow and in each canary step.")
    offline_tolerance: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Held-out accuracy (a fraction) a retrained candidate may lose against the champion "
        "and still start: on a hold-out of a hundred images one image moves it by a point.",
    )
    max_step_s: float = Field(
        86_400.0, gt=0, description="Longest wait for enough evidence in one step; then the rollout holds."
    )
    min_labels: int = Field(
        200, ge=0, description="Delayed labels of the candidate's predictions a step needs to pass."
    )
    bake_s: float = Field(3600.0, ge=0, description="Time a promoted candidate serves before it is baked.")
    max_failures: int = Field(
        3,
        ge=1,
        description="Failed statistical checks that roll back (a failed hard gate rolls back at once).",
    )
    interval_s: float = Field(30.0, gt=0, description="How often the controller reconciles.")
    # -- gates ---------------------------------------------------------------------------------
    alpha: float = Field(
        0.05, gt=0, lt=1, description="Error rate of each statistical gate, over a whole step."
    )
    accuracy_margin: float = Field(
        0.03, ge=0, lt=1, description="Accuracy on delayed labels the candidate may lose (non-inferiority)."
    )
    min_wins: int = Field(
        0,
        ge=0,
        description="Labeled shadow disagreements the candidate must win beyond the champion's before "
        "it serves (0: it need only not be worse; a label-free stopgap must win).",
    )
    min_agreement: float = Field(
        0.9, ge=0, le=1, description="Least share of shadowed images on which both models give one label."
    )
    max_ece_increase: float = Field(0.02, ge=0, description="Calibration error the candidate may add.")
    max_prediction_shift: float = Field(
        0.1,
        ge=0,
        le=1,
        description="How far one class's share of the candidate's predictions may stray from its share "
        "of the champion's in the same window (beyond doubt).",
    )
    max_input_shift: float = Field(
        0.15,
        ge=0,
        le=1,
        description="How far the canary's two cohorts' images may differ in one statistic (largest gap "
        "of their distributions) beyond doubt before the arms' figures are not comparable; then "
        "the step holds and an operator decides.",
    )
    max_error_rate_increase: float = Field(
        0.01, ge=0, le=1, description="Share of failed calls the candidate may add to the champion's."
    )
    max_p99_ratio: float = Field(
        1.5, ge=1, description="The candidate's p99 latency over the champion's, in the same window."
    )
    min_requests: int = Field(
        100, ge=1, description="Calls of each arm the error and latency gates need before they judge."
    )

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_not_booleans(cls, value: Any) -> Any:
        """true or false where a number goes is a mistake (pydantic would read them as 1 and 0)."""
        items = value if isinstance(value, list | tuple) else (value,)
        if any(isinstance(v, bool) for v in items):
            raise ValueError("a number, not true or false")
        return value

    @model_validator(mode="after")
    def _check_steps(self) -> RolloutPlan:
        if (
            not self.steps
            or any(not 0 < s <= 1 for s in self.steps)
            or list(self.steps) != sorted(self.steps)
        ):
            raise ValueError(f"steps must be rising shares in (0, 1], got {list(self.steps)}")
        if self.max_step_s < self.min_step_s:
            raise ValueError(f"max_step_s ({self.max_step_s}) is below min_step_s ({self.min_step_s})")
        return self


# A label-free stopgap (training.adapt) changes every answer it changes for the same reason, so it
# is judged by its wins: every request mirrored, served once it got more of 20 fresh labels right
# than the champion, one canary step, a short bake (a retrained version replaces it soon).
STOPGAP_PLAN = {
    "shadow_share": 1.0,
    "min_agreement": 0.0,
    "min_wins": 1,
    "min_labels": 20,
    "steps": (0.5,),
    "bake_s": 600.0,
}


def load_plan(path: Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RolloutPlan:
    """The plan in ``path`` (none: the defaults), with ``key=value`` overrides.

    Raises:
        InvalidInput: a missing or malformed file, an unknown key or a value out of range.
    """
    return load_yaml_model(
        RolloutPlan, path, overrides, what="rollout plan", examples="recipes/rollouts/*.yaml"
    )
