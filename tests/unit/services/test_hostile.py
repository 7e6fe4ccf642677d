"""The hostile catalogue of benchmarks/hostile.py against the gateway's routes in this process
(the benchmark sends it to a running stack, through the real ingress)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from benchmarks.hostile import catalogue, run
from nicheloop.keys import ApiKeys
from services.deps import GatewayResources
from tests.unit.services.fakes import OneVersion, ready


def test_every_hostile_request_gets_the_answer_it_should_and_the_service_still_serves(
    client: TestClient, res: GatewayResources, registry: OneVersion, as_role: dict[str, dict[str, str]]
) -> None:
    ready(res, registry)
    keys = {role: headers["X-API-Key"] for role, headers in as_role.items()}
    keys["other-app"] = ApiKeys(res.store).create(name="other-app", role="app", created_by="test")[0]
    result = run(client, keys)
    assert result["cases"] == len(catalogue(keys)) >= 40 and result["role_matrix_mismatches"] == 0, result
    assert result["five_xx"] == 0 and result["unanswered"] == 0, result
    assert result["unexpected"] == {} and result["healthy_after"] is True, result
    assert "auth: an app labels another app's prediction" in {case.name for case in catalogue(keys)}
