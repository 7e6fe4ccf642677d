"""The gateway fuzzed from its own OpenAPI schema (schemathesis, seeded and short): every route, as
the role it requires, answers below 500 and as its schema says (status, content type, body)."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from nicheloop.http import route_roles
from services.api import api
from services.deps import GatewayResources
from tests.unit.services.fakes import OneVersion, ready

ROLES = route_roles(api)


schema = schemathesis.openapi.from_asgi("/openapi.json", api)


@pytest.fixture
def served(client: TestClient, res: GatewayResources, registry: OneVersion) -> None:
    """The app as ``client`` set it up (resources, keys), with a model loaded."""
    ready(res, registry)


@schema.parametrize()
@settings(max_examples=30, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_answers_as_its_schema_says_never_a_5xx(
    case: schemathesis.Case, as_role: dict[str, dict[str, str]], served: None
) -> None:
    roles = ROLES[(case.operation.method.upper(), case.operation.path)]
    headers = as_role[roles[0]] if roles else {}
    # Not positive_data_acceptance: a schema-valid id that names no row is rightly a 404, and an
    # upload of schema-valid bytes that are no image rightly a 400.
    case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])
