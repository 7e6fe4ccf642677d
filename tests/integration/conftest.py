"""One real stack for the integration tests: Kafka (KRaft), MLflow, Ray, Ray Serve, the monitor.

It runs on its own ports and its own home, so it never touches a stack you have running.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray

from cli.demo import DEMO_PLAN, as_role, demo_keys, start_loop
from deploy.local import stack
from nicheloop.contracts import CANDIDATE, CHAMPION
from nicheloop.model import build_model
from nicheloop.registry import Registry, VersionInfo
from nicheloop.settings import Settings
from tests.conftest import postgres_database

# the defaults, said out loud: the tests register versions often enough that its cooldown holds
QUIET_POLICY = "cooldown_s: 21600\nstopgap_images: 0\n"  # a test turns on what it tests


def _test_settings(home, backend: str) -> Settings:
    """Local ports apart from a default stack; with ``postgresql`` the store and MLflow use it (and
    the other serving mode and ingress)."""
    urls: dict[str, str] = {}
    if backend == "postgresql":  # and the model in the HTTP replica: both serving modes run the loop
        urls = {
            "database_url": postgres_database("loop_store"),
            "mlflow_backend_uri": postgres_database("loop_mlflow"),
            "serving_mode": "fused",
            "serve_ingress": "proxy",  # and Ray Serve's Python proxy takes HTTP: both ingresses too
        }
    (home / "policy.yaml").write_text(QUIET_POLICY)
    (home / "retrain.yaml").write_text("epochs: 2\n")
    return Settings(
        home=home,
        kafka_port=29092,
        kafka_controller_port=29093,
        mlflow_port=25000,
        ray_port=26379,
        ray_worker_ports=(20000, 21999),
        serve_port=28000,
        ingress_ports=(28100, 28199),
        metrics_port=29100,
        controller_port=29110,
        rollout_stale_s=8.0,  # a killed rollout controller's candidate loses its share in seconds
        # the loop test asserts no alarm on its first 50 unshifted images from three monitors,
        # against a reference of ~70 held-out images: at 0.01 and 0.001 a chance alarm failed it
        # (p 0.006 image, 1e-4 early features); the shift scores p < 1e-6 on both
        drift_alpha=1e-4,
        policy_every_s=3.0,  # the retraining policy looks within the tests' waits
        sampling_dispute_share=1.0,  # off by default; test_rollout checks the sampler hears the shadow
        retrain_policy=home / "policy.yaml",  # a test edits it to make the policy act
        retrain_recipe=home / "retrain.yaml",
        policy_rollout_plan=DEMO_PLAN,
        **urls,
    )


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The whole stack, once on the embedded defaults (SQLite, the model in its own deployment) and
    once on PostgreSQL (the model in the HTTP replica)."""
    settings = _test_settings(tmp_path_factory.mktemp("nicheloop-home"), request.param)
    try:
        start_loop(settings, per_class=100, epochs=2)  # the loop, not the recipe, is under test here
        yield settings
    finally:
        if ray.is_initialized():
            ray.shutdown()
        started = set().union(*(stack.family(st.pid) for st in stack.status(settings) if st.pid is not None))
        stack.down(settings)
        left = stack.alive(started)
        assert not left, f"`stack down` left processes {sorted(left)} running"


def role(live: Settings, name: str) -> dict[str, str]:
    """The headers of a call made as the role ``name`` (the demo's keys of the live stack)."""
    return as_role(demo_keys(live), name)


def register_candidate(live: Settings, registry: Registry, *, trained: bool) -> VersionInfo:
    """The champion's own weights as a new version (an equal candidate), or an untrained network of
    the same shape; either claims the champion's held-out accuracy, so the offline gates pass."""
    champion = registry.load(registry.resolve(CHAMPION).version)
    model = champion.model
    if not trained:
        model = build_model(live.backbone, model.class_names, live.image_size)
    accuracy = champion.reference.accuracy if champion.reference is not None else 0.9
    return registry.register(
        model,
        champion.reference,
        params={"test": "rollout"},
        metrics={"holdout_accuracy": accuracy, "parent_holdout_accuracy": accuracy},
        lineage={"parent_version": champion.info.version},
        alias=CANDIDATE,
    )
