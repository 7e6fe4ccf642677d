"""OAuth2 bearer tokens (JWT) from an identity provider, beside the service's own API keys.

A token is taken when it is signed by a key of the provider's JWKS with an asymmetric algorithm
(never ``none`` or an HMAC one, which would let the public key sign), names the configured issuer
and audience, has not expired (``leeway_s`` for clocks that disagree), and grants one of the
service's roles in ``role_claim`` (a string, or a list of which the first known role counts).
The caller's name (``name_claim``, default ``sub``) is who the audit log and label provenance name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import jwt

from nicheloop.errors import Forbidden, NotReady, Unauthenticated
from nicheloop.keys import ROLES, Caller, Role

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
MAX_NAME = 128  # the longest actor name the store keeps


@dataclass(frozen=True)
class TokenPolicy:
    """Which tokens to take: ``NICHELOOP_OIDC_*``."""

    issuer: str
    audience: str
    jwks_url: str
    role_claim: str = "role"
    name_claim: str = "sub"
    leeway_s: float = 30.0


class BearerTokens:
    """Verifies bearer tokens against the provider's keys, fetched from ``jwks_url`` and kept five
    minutes (an unknown key id fetches them again: a rotated key is taken without a restart)."""

    def __init__(self, policy: TokenPolicy, *, fetch_timeout_s: float = 5.0) -> None:
        self.policy = policy
        self.jwks = jwt.PyJWKClient(policy.jwks_url, lifespan=300, timeout=fetch_timeout_s)

    def verify(self, token: str) -> Caller:
        """The caller ``token`` names.

        Raises:
            Unauthenticated: not a token of the provider, or expired, or for another audience.
            Forbidden: a valid token that grants none of the service's roles.
            NotReady: the provider's keys could not be fetched (retry later).
        """
        p = self.policy
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=p.audience,
                issuer=p.issuer,
                leeway=p.leeway_s,
                options={"require": ["exp", "iss", "aud", p.name_claim]},
            )
        except jwt.PyJWKClientConnectionError as exc:
            raise NotReady(
                f"the identity provider's keys ({p.jwks_url}) could not be fetched ({exc}); retry later"
            ) from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"bearer token refused: {exc}") from exc
        name = str(claims[p.name_claim])
        if not name or len(name) > MAX_NAME:
            raise Unauthenticated(
                f"bearer token refused: its {p.name_claim!r} must be 1 to {MAX_NAME} characters"
            )
        return Caller(name=name, role=_role(claims.get(p.role_claim), p.role_claim, name), key_id=None)


def _role(granted: Any, claim: str, name: str) -> Role:
    """The first of the service's roles in the claim (a string or a list of strings)."""
    offered = [granted] if isinstance(granted, str) else granted if isinstance(granted, list) else []
    for role in offered:
        if role in ROLES:
            return cast(Role, role)
    raise Forbidden(f"{name!r} holds none of the roles {ROLES} in its token's {claim!r} claim; ask an admin")
