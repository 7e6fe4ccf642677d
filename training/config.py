"""The typed training recipe. It is saved with every MLflow run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """Hyper-parameters of one fine-tune (defaults suit small CPU runs)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(32, ge=1)
    lr_head: float = Field(2e-3, gt=0)
    lr_backbone: float = Field(5e-4, gt=0, description="Discriminative: the pretrained body learns slower.")
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP when > 1).")
    use_gpu: bool | None = Field(None, description="None: use a GPU when the cluster has one.")
    threads_per_worker: int | None = Field(None, ge=1, description="torch threads; None: all CPUs of the host.")
