"""Who may call what on the gateway: no route is open by omission, and every route answers every
role (and no credential) as the matrix says."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from nicheloop.http import OPEN_ROUTES, route_roles
from nicheloop.keys import ROLES
from services.api import api

# the matrix of issue 19: route -> the roles that may call it
MATRIX = {
    ("POST", "/v1/predict"): ("app",),
    ("POST", "/v1/feedback"): ("app",),
    ("GET", "/v1/review/next"): ("reviewer",),
    ("POST", "/v1/review/{task_id}"): ("reviewer",),
    ("POST", "/v1/review/{task_id}/skip"): ("reviewer",),
    ("POST", "/v1/review/{task_id}/renew"): ("reviewer",),
    ("POST", "/v1/review/{task_id}/release"): ("reviewer",),
    ("GET", "/v1/whoami"): ("app", "reviewer", "operator", "admin"),
    ("GET", "/v1/review/stats"): ("reviewer", "operator"),
    ("GET", "/v1/images/{sha256}"): ("reviewer", "operator"),
    ("GET", "/v1/images/{sha256}/saliency"): ("reviewer", "operator"),
    ("GET", "/metrics"): ("operator",),
}


def test_no_route_is_open_by_omission() -> None:
    table = route_roles(api)
    open_ = {path for (_, path), roles in table.items() if roles is None}
    assert open_ <= OPEN_ROUTES, f"routes without a role: {sorted(open_ - OPEN_ROUTES)}"
    assert {k: v for k, v in table.items() if v is not None} == MATRIX


@pytest.mark.parametrize("role", [*ROLES, None])
def test_every_route_answers_every_role_as_the_matrix_says(
    client: TestClient, as_role: dict[str, dict[str, str]], role: str | None
) -> None:
    headers = as_role[role] if role else {"X-API-Key": ""}
    for (method, path), allowed in MATRIX.items():
        url = path.replace("{task_id}", "1").replace("{sha256}", "0" * 64)
        status = client.request(method, url, headers=headers, json={}).status_code
        if role is None:
            assert status == 401, (method, path)
        elif role in allowed:
            assert status not in (401, 403), (method, path, role, status)
        else:
            assert status == 403, (method, path, role)
