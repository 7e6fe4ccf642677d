"""The deploy files parse and point at things that exist in the code."""

import importlib
import json
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def test_compose_services_and_env() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    assert {"kafka", "postgres", "mlflow", "ray", "monitor", "controller", "prometheus"} <= set(
        compose["services"]
    )
    assert compose["services"]["monitor"]["environment"]["NICHELOOP_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_rayservice_import_path_resolves() -> None:
    service = yaml.safe_load((DEPLOY / "kuberay" / "rayservice.yaml").read_text())
    app = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]
    module, attr = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_rayservice_settings_are_real_and_put_autoscaled_predictors_on_gpus(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from nicheloop.settings import Settings
    from services.inference import predictor_deployment

    service = yaml.safe_load((DEPLOY / "kuberay" / "rayservice.yaml").read_text())
    env = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    plain = {e["name"]: e["value"] for e in env if "value" in e}
    fields = {f"NICHELOOP_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in plain if k.startswith("NICHELOOP_")} <= fields
    assert plain["RAY_SERVE_ENABLE_HA_PROXY"] == "1"  # what NICHELOOP_SERVE_INGRESS sets up locally
    for key, value in plain.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert (
        settings.serving_mode == "split" and settings.max_inflight_predictions < settings.gateway_max_ongoing
    )
    predictor = predictor_deployment(settings)
    assert predictor.ray_actor_options["num_gpus"] == 1
    scaling = predictor._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 4)


def test_alert_rules_use_exported_metric_names(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from monitoring.metrics import MonitorMetrics
    from nicheloop.rollouts import Rollouts
    from nicheloop.store import Store
    from rollout.runner import rollout_metrics

    exported = {m.name for m in MonitorMetrics().registry.collect()}
    text = rollout_metrics(Rollouts(Store(f"sqlite:///{tmp_path / 'db.sqlite'}")), {"ticks": 0, "errors": 0})
    exported |= {m.name for m in text_string_to_metric_families(text.decode())} | {"up"}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    for rule in rules:
        assert any(name in rule["expr"] for name in exported), rule["expr"]


def test_grafana_dashboard_is_json_with_panels() -> None:
    dash = json.loads((DEPLOY / "grafana" / "nicheloop.json").read_text())
    graphs = [p for p in dash["panels"] if p["type"] != "row"]
    assert dash["uid"] == "nicheloop" and all(p["targets"][0]["expr"] for p in graphs)
    assert any(p["title"] == "Rollout" for p in dash["panels"] if p["type"] == "row")


def test_promtool_accepts_the_alert_rules_and_their_unit_tests() -> None:
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run deploy/local/promtool.sh (make test does)"
    rules = DEPLOY / "prometheus"
    check = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"], cwd=rules, capture_output=True, text=True
    )
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=rules, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
