"""Who may act: API keys with a role, and the append-only audit log of privileged actions.

A key is ``nlk_`` and 43 random URL-safe characters (256 bits). The store keeps its SHA-256 and its
first characters (to find the row), never the key: it is shown once, when it is made. A slow
password hash buys nothing for a random key of this length. Keys may expire and are revoked, never
deleted, so the audit log's actors keep their meaning.

Roles (issue 19): ``app`` predicts and gives feedback, ``reviewer`` labels the queue, ``operator``
watches drift and moves rollouts, ``admin`` manages keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import select
from sqlalchemy.orm import Session

from nicheloop.contracts import aware, utcnow
from nicheloop.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from nicheloop.store import ApiKeyRow, AuditRow, Store

Role = Literal["app", "reviewer", "operator", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
KEY_PREFIX = "nlk_"
_LOOKUP_CHARS = 12  # of the key after its prefix: finds its row (72 bits: no collisions in practice)


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: the credential's name (a reviewer's identity) and role."""

    name: str
    role: Role
    key_id: int | None = None  # None for a bearer token from the identity provider


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed: everything but the key."""

    id: int
    name: str
    role: Role
    lookup: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or aware(self.expires_at) > now)

    def state(self, now: datetime) -> str:
        """``active``, ``revoked`` or ``expired``, as listed."""
        return "active" if self.active(now) else ("revoked" if self.revoked_at else "expired")


def _info(row: ApiKeyRow) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        name=row.name,
        role=row.role,  # type: ignore[arg-type]
        lookup=row.lookup,
        created_at=aware(row.created_at),
        created_by=row.created_by,
        expires_at=aware(row.expires_at) if row.expires_at else None,
        revoked_at=aware(row.revoked_at) if row.revoked_at else None,
    )


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """Make, check, list and revoke keys on the SQL store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(
        self,
        *,
        name: str,
        role: Role,
        created_by: str,
        expires_in: timedelta | None = None,
        now: datetime | None = None,
    ) -> tuple[str, KeyInfo]:
        """A new key for ``name`` with ``role``; returns the key (shown this once) and its record.

        Raises:
            InvalidInput: an unknown role or an empty name.
            Conflict: ``name`` already has an active key (revoke it first: a name is an identity).
        """
        if role not in ROLES:
            raise InvalidInput(f"unknown role {role!r}; use one of {list(ROLES)}")
        if not name.strip() or len(name) > 128:
            raise InvalidInput("a key needs a name of 1 to 128 characters (who or what uses it)")
        now = now or utcnow()
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with Session(self.store.engine) as s, s.begin():
            taken = [_info(r) for r in s.scalars(select(ApiKeyRow).where(ApiKeyRow.name == name))]
            if any(k.active(now) for k in taken):
                raise Conflict(
                    f"{name!r} already has an active key; revoke it first (`nicheloop keys revoke`)"
                )
            row = ApiKeyRow(
                name=name,
                role=role,
                lookup=key[len(KEY_PREFIX) : len(KEY_PREFIX) + _LOOKUP_CHARS],
                digest=_digest(key),
                created_at=now,
                created_by=created_by,
                expires_at=now + expires_in if expires_in else None,
            )
            s.add(row)
            s.flush()
            return key, _info(row)

    def verify(self, key: str, now: datetime | None = None) -> Caller:
        """The caller ``key`` belongs to.

        Raises:
            Unauthenticated: not a key of this service, or revoked, or expired.
        """
        now = now or utcnow()
        if not key.startswith(KEY_PREFIX) or not key.isascii():
            raise Unauthenticated("not an API key of this service (they start with nlk_)")
        lookup = key[len(KEY_PREFIX) : len(KEY_PREFIX) + _LOOKUP_CHARS]
        with Session(self.store.engine) as s:
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.lookup == lookup))
            if row is None or not hmac.compare_digest(row.digest, _digest(key)):
                raise Unauthenticated("unknown API key")
            info = _info(row)
        if info.revoked_at is not None:
            raise Unauthenticated(f"the key of {info.name!r} was revoked")
        if not info.active(now):
            raise Unauthenticated(f"the key of {info.name!r} expired; ask an admin for a new one")
        return Caller(name=info.name, role=info.role, key_id=info.id)

    def every(self) -> list[KeyInfo]:
        """Every key ever made, newest first (revoked and expired ones too)."""
        with Session(self.store.engine) as s:
            return [_info(r) for r in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id.desc()))]

    def revoke(self, name: str, now: datetime | None = None) -> KeyInfo:
        """Revoke ``name``'s active key.

        Raises:
            NotFound: ``name`` has no active key.
        """
        now = now or utcnow()
        with Session(self.store.engine) as s, s.begin():
            for row in s.scalars(
                select(ApiKeyRow).where(ApiKeyRow.name == name, ApiKeyRow.revoked_at.is_(None))
            ):
                if _info(row).active(now):
                    row.revoked_at = now
                    s.flush()
                    return _info(row)
        raise NotFound(f"{name!r} has no active key (`nicheloop keys list` shows them all)")


@dataclass(frozen=True)
class AuditEntry:
    """One privileged action: who (name and role), when, what, on what, from where, and why."""

    id: int
    at: datetime
    actor: str
    role: str
    action: str
    target: str
    source: str
    detail: dict[str, Any]


class Audit:
    """The append-only log of privileged actions: written here, read by operators, never changed."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record(
        self,
        *,
        actor: Caller,
        action: str,
        target: str,
        source: str,
        detail: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> int:
        """Append one entry; returns its id."""
        with Session(self.store.engine) as s, s.begin():
            row = AuditRow(
                at=now or utcnow(),
                actor=actor.name,
                role=actor.role,
                action=action[:64],
                target=target[:256],
                source=source[:128],
                detail=detail or {},
            )
            s.add(row)
            s.flush()
            return row.id

    def read(self, *, limit: int = 200, action: str | None = None) -> list[AuditEntry]:
        """The newest ``limit`` entries (of ``action``, or of every action starting ``action.``,
        if given), newest first."""
        query = select(AuditRow).order_by(AuditRow.id.desc()).limit(max(1, min(limit, 10_000)))
        if action is not None:
            query = query.where((AuditRow.action == action) | AuditRow.action.startswith(f"{action}."))
        with Session(self.store.engine) as s:
            return [
                AuditEntry(r.id, aware(r.at), r.actor, r.role, r.action, r.target, r.source, dict(r.detail))
                for r in s.scalars(query)
            ]


class Administration:
    """The privileged acts on keys and labels, each recorded in the audit log as ``actor`` from
    ``source``: one implementation for the command line and the controller's HTTP routes."""

    def __init__(self, store: Store, *, actor: Caller, source: str) -> None:
        self.store, self.actor, self.source = store, actor, source
        self.keys, self.audit = ApiKeys(store), Audit(store)

    def create_key(
        self, *, name: str, role: Role, expires_in: timedelta | None = None
    ) -> tuple[str, KeyInfo]:
        """A new key (shown this once); raises as :meth:`ApiKeys.create`."""
        key, info = self.keys.create(name=name, role=role, created_by=self.actor.name, expires_in=expires_in)
        self._record("key.create", name, {"role": role})
        return key, info

    def revoke_key(self, name: str) -> KeyInfo:
        """Revoke ``name``'s active key; raises as :meth:`ApiKeys.revoke`."""
        info = self.keys.revoke(name)
        self._record("key.revoke", name, {"role": info.role})
        return info

    def exclude_labels(self, actor_name: str, *, reason: str) -> bool:
        """Leave ``actor_name``'s labels out of every snapshot from now on; False if they already were.

        Raises:
            InvalidInput: no reason given (the exclusion and the audit log keep it).
        """
        return self._decide("labels.exclude", self.store.exclude_actor, actor_name, reason)

    def vouch_labels(self, actor_name: str, *, reason: str) -> bool:
        """Let ``actor_name``'s labels train although their gold accuracy is under the gate's bar;
        False if they already did.

        Raises:
            InvalidInput: no reason given (the decision and the audit log keep it).
        """
        return self._decide("labels.vouch", self.store.vouch_actor, actor_name, reason)

    def _decide(self, action: str, record: Callable[..., bool], actor_name: str, reason: str) -> bool:
        """An operator's decision on someone's labels, kept with its reason and audited."""
        if not reason.strip():
            raise InvalidInput("say why (a reason is kept with the decision on these labels)")
        new = record(actor_name, by=self.actor.name, reason=reason)
        self._record(action, actor_name, {"reason": reason, "new": new})
        return new

    def _record(self, action: str, target: str, detail: dict[str, Any]) -> None:
        self.audit.record(actor=self.actor, action=action, target=target, source=self.source, detail=detail)
