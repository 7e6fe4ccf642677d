"""Settings derive local URLs and travel to child processes intact."""

from pathlib import Path

import pytest

from nicheloop.settings import Settings, child_env, settings_env, shareable

ROOT = Path(__file__).resolve().parents[3]


def test_settings_derive_local_urls(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, kafka_port=1234, mlflow_port=2345)
    assert s.bootstrap_servers == "127.0.0.1:1234" and s.tracking_uri == "http://127.0.0.1:2345"
    assert s.db_url == f"sqlite:///{tmp_path.resolve() / 'nicheloop.db'}"
    assert Settings(kafka_bootstrap="kafka:9092").bootstrap_servers == "kafka:9092"


def test_settings_env_round_trips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = Settings(home=tmp_path, ray_worker_ports=(40000, 40999), drift_window=77)
    for key, value in settings_env(s).items():
        monkeypatch.setenv(key, value)
    assert Settings() == s.model_copy(update={"home": tmp_path.resolve()})


def test_too_few_ingress_ports_are_refused_with_a_range_that_fits(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"at least 10 ports, e\.g\. 28100-28199"):
        Settings(home=tmp_path, ingress_ports=(28100, 28104))


def test_the_signing_key_stays_out_of_children_unless_they_sign(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = "ab" * 32
    monkeypatch.setenv("NICHELOOP_SECRET_KEY", secret)
    s = Settings(home=tmp_path)
    assert s.secret_key is not None and secret not in repr(s)  # not even in a log line
    assert "secret_key" not in shareable(s) and "NICHELOOP_SECRET_KEY" not in settings_env(s)
    assert "NICHELOOP_SECRET_KEY" not in child_env(s)  # not inherited either
    assert child_env(s, secrets=True)["NICHELOOP_SECRET_KEY"] == secret  # the Ray head's
