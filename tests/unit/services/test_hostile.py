"""The hostile catalogue of benchmarks/hostile.py against the gateway's routes in this process
(the benchmark sends it to a running stack, through the real ingress)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from benchmarks.hostile import catalogue, run
from services.deps import GatewayResources
from tests.unit.services.fakes import OneVersion, ready


def test_every_hostile_request_gets_the_answer_it_should_and_the_service_still_serves(
    client: TestClient, res: GatewayResources, registry: OneVersion
) -> None:
    ready(res, registry)
    result = run(client)
    assert result["cases"] == len(catalogue()) >= 40
    assert result["five_xx"] == 0 and result["unanswered"] == 0, result
    assert result["unexpected"] == {} and result["healthy_after"] is True, result
