"""Build and deploy the nicheloop application on Ray Serve."""

from __future__ import annotations

import logging
import time
import urllib.request

from ray import serve
from ray.serve import Application

from nicheloop.cluster import connect_ray
from nicheloop.errors import NotReady
from nicheloop.settings import Settings, shareable
from services.gateway import gateway_deployment
from services.inference import candidate_deployment, predictor_deployment

log = logging.getLogger(__name__)

APP_NAME = "nicheloop"


def build_app(settings: Settings) -> Application:
    """The ingress bound to the champion's and the candidate's predictor deployments, or holding
    both models itself when ``serving_mode`` is ``fused`` (settings travel as a plain dict, without
    secrets)."""
    config = shareable(settings)  # no secret in a deployment's arguments: replicas read their own
    if settings.fused:
        return gateway_deployment(settings).bind(None, config, None)
    predictor = predictor_deployment(settings).bind(config, "champion")
    candidate = candidate_deployment(settings).bind(config, "candidate")
    return gateway_deployment(settings).bind(predictor, config, candidate)


def deploy(
    settings: Settings, wait_ready_s: float = 180.0, *, name: str = APP_NAME, route_prefix: str = "/"
) -> str:
    """Deploy (or update) the app on the Ray cluster and wait until its /readyz says ready.

    Returns the app's base URL. Raises:
        NotReady: if the endpoint is not ready in time (no champion registered, say).
    """
    connect_ray(settings)
    serve.start(
        http_options={
            "host": settings.host,
            "port": settings.serve_port,
            "request_timeout_s": settings.request_timeout_s,
        }
    )
    serve.run(build_app(settings), name=name, route_prefix=route_prefix, blocking=False)
    url = settings.serve_url + route_prefix.rstrip("/")
    deadline = time.monotonic() + wait_ready_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return url
        except OSError:
            pass
        time.sleep(1.0)
    raise NotReady(f"{url}/readyz not ready after {wait_ready_s:.0f}s; is a champion registered?")


def undeploy(settings: Settings) -> None:
    connect_ray(settings)
    serve.shutdown()


def app_builder(args: dict[str, str] | None = None) -> Application:
    """Entry for `serve run services.app:app_builder` and KubeRay's RayService.

    Settings come from the environment (``NICHELOOP_*``); ``args`` may override any of them.
    """
    return build_app(Settings.model_validate(args or {}))
