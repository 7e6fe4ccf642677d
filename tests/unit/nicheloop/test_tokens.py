"""Bearer tokens (JWT) against a real JWKS served over HTTP on this machine: a token of the
configured issuer and audience with a role is a caller; every other token is a 401 (or a 403
without a role), a provider that cannot be reached a 503, and API keys keep working beside them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jwt.algorithms import RSAAlgorithm

from nicheloop.errors import Forbidden, NotReady, Unauthenticated
from nicheloop.http import Gatekeeper, gatekeeper_for, install_guards, requires
from nicheloop.keys import ApiKeys, Caller
from nicheloop.settings import Settings
from nicheloop.store import Store
from nicheloop.tokens import BearerTokens, TokenPolicy

ISSUER, AUDIENCE = "https://id.example.test/", "nicheloop"


class Provider:
    """An identity provider's signing key and its JWKS, served at ``url``."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()
        jwks = self.jwks

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the standard library's name
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(jwks)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, *, key: Any = None, kid: str = "k1", alg: str = "RS256", **claims: Any) -> str:
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ann", "role": "operator", "exp": time.time() + 300}
        body.update(claims)
        return jwt.encode(
            {k: v for k, v in body.items() if v is not None},
            key or self.key,
            algorithm=alg,
            headers={"kid": kid},
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hmac_signed_with_public_key(provider: Provider) -> str:
    """A token whose header says HS256 and whose HMAC key is the provider's public key (PyJWT will
    not make one, so it is made by hand)."""
    pem = provider.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ann", "role": "admin", "exp": time.time() + 300}
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = _b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    p = Provider()
    yield p
    p.server.shutdown()


@pytest.fixture
def tokens(provider: Provider) -> BearerTokens:
    return BearerTokens(TokenPolicy(issuer=ISSUER, audience=AUDIENCE, jwks_url=provider.url))


def test_a_token_of_the_provider_names_the_caller_and_its_role(
    provider: Provider, tokens: BearerTokens
) -> None:
    assert tokens.verify(provider.token()) == Caller(name="ann", role="operator", key_id=None)
    listed = provider.token(sub="bo", role=["viewer", "reviewer", "admin"])  # the first known role counts
    assert tokens.verify(listed) == Caller(name="bo", role="reviewer", key_id=None)


@pytest.mark.parametrize(
    ("claims", "says"),
    [
        ({"aud": "another-service"}, "(?i)audience"),
        ({"iss": "https://evil.example.test/"}, "issuer"),
        ({"exp": time.time() - 120}, "expired"),
        ({"exp": None}, "exp"),
        ({"sub": None}, "sub"),
        ({"sub": "x" * 200}, "1 to 128"),
    ],
)
def test_a_token_with_wrong_claims_is_refused(
    provider: Provider, tokens: BearerTokens, claims: dict[str, Any], says: str
) -> None:
    with pytest.raises(Unauthenticated, match=says):
        tokens.verify(provider.token(**claims))


def test_a_forged_token_is_refused(provider: Provider, tokens: BearerTokens) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unauthenticated, match="Signature"):
        tokens.verify(provider.token(key=stranger))  # the provider's kid, another key
    with pytest.raises(Unauthenticated):
        tokens.verify(provider.token(key=stranger, kid="k9"))  # a key the provider never published
    with pytest.raises(Unauthenticated):  # HS256 keyed with the public key: the classic confusion
        tokens.verify(_hmac_signed_with_public_key(provider))
    unsigned = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "ann", "role": "admin"}, None, algorithm="none"
    )
    with pytest.raises(Unauthenticated):
        tokens.verify(unsigned)
    with pytest.raises(Unauthenticated):
        tokens.verify("not.a.token")


def test_a_token_without_a_role_of_the_service_is_forbidden(provider: Provider, tokens: BearerTokens) -> None:
    for role in (None, "root", ["viewer"], 7):
        with pytest.raises(Forbidden, match="holds none of the roles"):
            tokens.verify(provider.token(role=role))


def test_an_unreachable_provider_is_a_503_not_a_401(provider: Provider) -> None:
    away = BearerTokens(
        TokenPolicy(issuer=ISSUER, audience=AUDIENCE, jwks_url="http://127.0.0.1:9/jwks.json"),
        fetch_timeout_s=1.0,
    )
    with pytest.raises(NotReady, match="could not be fetched"):
        away.verify(provider.token())


def test_routes_take_tokens_beside_api_keys(provider: Provider, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    settings = Settings(home=tmp_path, oidc_issuer=ISSUER, oidc_jwks_url=provider.url)
    app = FastAPI()
    install_guards(app)
    gate = gatekeeper_for(store, settings)
    assert isinstance(gate, Gatekeeper) and gate.tokens is not None
    app.state.gatekeeper = gate

    @app.get("/drift")
    async def drift(caller: Caller = requires("operator")) -> dict[str, str]:
        return {"by": caller.name}

    client = TestClient(app, raise_server_exceptions=False)
    bearer = {"Authorization": f"Bearer {provider.token()}"}
    assert client.get("/drift", headers=bearer).json() == {"by": "ann"}
    key, _ = ApiKeys(store).create(name="ops", role="operator", created_by="t")
    assert client.get("/drift", headers={"X-API-Key": key}).json() == {"by": "ops"}
    reviewer = {"Authorization": f"Bearer {provider.token(role='reviewer')}"}
    assert client.get("/drift", headers=reviewer).status_code == 403
    expired = {"Authorization": f"Bearer {provider.token(exp=time.time() - 120)}"}
    refused = client.get("/drift", headers=expired)
    assert refused.status_code == 401 and "expired" in refused.json()["detail"]
    assert gatekeeper_for(store, Settings(home=tmp_path)).tokens is None  # off unless configured
