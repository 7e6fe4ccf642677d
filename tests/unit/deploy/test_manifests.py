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
    assert plain["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
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


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())


def test_compose_ports_agree_with_the_settings_and_only_the_endpoint_is_public(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from nicheloop.settings import Settings

    services = _compose()["services"]

    def settings_of(name: str) -> Settings:
        with monkeypatch.context() as env:
            for key, value in services[name]["environment"].items():
                env.setenv(key, str(value))
            return Settings()

    ray, monitor, controller = (settings_of(name) for name in ("ray", "monitor", "controller"))
    ray_start = services["ray"]["entrypoint"][-1]
    assert f"--port {ray.ray_head_address.rsplit(':', 1)[1]}" in ray_start
    assert "--include-dashboard false" in ray_start  # no job API to reach at all
    published = {name: [str(p) for p in svc.get("ports", [])] for name, svc in services.items()}
    assert published["ray"] == [f"{ray.serve_port}:{ray.serve_port}"]
    assert published["monitor"] == [f"127.0.0.1:{monitor.metrics_port}:{monitor.metrics_port}"]
    port = controller.controller_port
    assert published["controller"] == [f"127.0.0.1:{port}:{port}"]
    assert not published["kafka"] and not published["postgres"]
    public = [p for name, ports in published.items() if name != "ray" for p in ports]
    assert all(p.startswith("127.0.0.1:") for p in public), public
    scraped = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert f"monitor:{monitor.metrics_port}" in scraped and f"controller:{port}" in scraped
    assert f"ray:{ray.serve_port}" in scraped  # the gateway's /metrics
    assert "ray:8080" in scraped and "--metrics-export-port 8080" in ray_start
    jobs = {job["job_name"]: job for job in yaml.safe_load(scraped)["scrape_configs"]}
    for name in ("nicheloop-gateway", "nicheloop-controller"):  # their /metrics take an operator's key
        secret = jobs[name]["authorization"]["credentials_file"].rsplit("/", 1)[1]
        assert secret in services["prometheus"]["secrets"] and secret in _compose()["secrets"]


def test_ray_needs_its_token_everywhere_and_nothing_runs_as_root() -> None:
    compose = _compose()
    for name in ("ray", "monitor", "controller"):
        svc = compose["services"][name]
        assert svc["environment"]["RAY_AUTH_MODE"] == "token" and "ray_token" in svc["secrets"], name
    assert "secrets/" in (DEPLOY.parent / ".gitignore").read_text()
    dockerfile = (DEPLOY / "compose" / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in dockerfile if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")

    service = yaml.safe_load((DEPLOY / "kuberay" / "rayservice.yaml").read_text())
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]["template"]
    pods = [head, *(group["template"] for group in cluster["workerGroupSpecs"])]
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert all(
            c["securityContext"]["allowPrivilegeEscalation"] is False for c in pod["spec"]["containers"]
        )
    for pod in pods:  # the id-signing key: a mounted secret on every node, never an environment value
        [container] = pod["spec"]["containers"]
        key_file = {e["name"]: e.get("value") for e in container["env"]}["NICHELOOP_SECRET_KEY_FILE"]
        [mount] = [m for m in container["volumeMounts"] if key_file.startswith(m["mountPath"] + "/")]
        [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
        assert mount["readOnly"] is True and volume["secret"]["secretName"]
        assert not any(e["name"] == "NICHELOOP_SECRET_KEY" for e in container["env"])
    env = {e["name"]: e.get("value") for e in head["spec"]["containers"][0]["env"]}
    ports = {p["name"]: p["containerPort"] for p in head["spec"]["containers"][0]["ports"]}
    assert ports == {"gcs": int(env["NICHELOOP_RAY_PORT"]), "serve": int(env["NICHELOOP_SERVE_PORT"])}
    policy = yaml.safe_load((DEPLOY / "kuberay" / "networkpolicy.yaml").read_text())
    assert all(
        policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        for pod in pods
    )
    open_rule = [rule for rule in policy["spec"]["ingress"] if "from" not in rule]
    assert open_rule == [{"ports": [{"port": ports["serve"], "protocol": "TCP"}]}]  # only the endpoint
