"""The rollout controller fuzzed from its own OpenAPI schema (schemathesis, seeded and short): every
route, as the first role it admits, answers below 500 and as its schema says."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from nicheloop.http import route_roles
from nicheloop.keys import ROLES, ApiKeys
from nicheloop.rollouts import Rollouts
from nicheloop.store import Store
from rollout.operations import Operations
from rollout.policy import RetrainPolicy
from rollout.retrain import PolicyEvidence, PolicyLoop
from rollout.runner import controller_api
from tests.unit.rollout.test_controller import Registry
from tests.unit.rollout.test_retrain import Registry as PolicyRegistry


def _app(store: Store) -> FastAPI:
    policy = PolicyLoop(
        PolicyEvidence(store, PolicyRegistry(None)), RetrainPolicy(), holder="t", model_name="m"
    )
    return controller_api(Operations(Rollouts(store), Registry()), policy=policy)


# the schema and route table are the code's: an in-memory store serves to build them
_SCHEMA_APP = _app(Store("sqlite://"))
ROUTE_ROLES = route_roles(_SCHEMA_APP)
schema = schemathesis.openapi.from_dict(_SCHEMA_APP.openapi())


@pytest.fixture
def controller(tmp_path: Path) -> tuple[FastAPI, dict[str, dict[str, str]]]:
    """A controller over a fresh store, and one key's header per role."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    keys = ApiKeys(store)
    headers = {r: {"X-API-Key": keys.create(name=f"fuzz-{r}", role=r, created_by="t")[0]} for r in ROLES}
    return _app(store), headers


@schema.parametrize()
@settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_controller_route_answers_as_its_schema_says_never_a_5xx(
    case: schemathesis.Case, controller: tuple[FastAPI, dict[str, dict[str, str]]]
) -> None:
    app, as_role = controller
    roles = ROUTE_ROLES[(case.operation.method.upper(), case.operation.path)]
    headers = as_role[roles[0]] if roles else {}
    # Not positive_data_acceptance: a schema-valid act that does not apply now (no live rollout, an
    # unknown version) is rightly a 4xx.
    case.call_and_validate(app=app, headers=headers, excluded_checks=[positive_data_acceptance])
