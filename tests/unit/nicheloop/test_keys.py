"""API keys and the audit log on SQLite and PostgreSQL: a key is shown once and kept as a hash,
checked, listed, expired and revoked; the audit log only grows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from nicheloop.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from nicheloop.keys import ApiKeys, Audit, Caller
from nicheloop.store import ApiKeyRow, Store

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_a_key_is_shown_once_kept_as_a_hash_and_names_its_caller(any_store: Store) -> None:
    keys = ApiKeys(any_store)
    key, info = keys.create(name="alice", role="reviewer", created_by="admin", now=T0)
    assert key.startswith("nlk_") and len(key) > 40 and info.role == "reviewer"
    with Session(any_store.engine) as s:
        [row] = s.scalars(select(ApiKeyRow)).all()
    assert key not in (row.digest, row.lookup) and row.lookup in key  # the key itself is not stored
    assert keys.verify(key, now=T0) == Caller("alice", "reviewer", info.id)
    for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), "nlk_" + "x" * 43, "sk-other", "nlk_é", ""):
        with pytest.raises(Unauthenticated):
            keys.verify(wrong, now=T0)


def test_expired_and_revoked_keys_are_refused_and_a_name_has_one_active_key(any_store: Store) -> None:
    keys = ApiKeys(any_store)
    key, _ = keys.create(name="app-1", role="app", created_by="admin", expires_in=timedelta(days=1), now=T0)
    assert keys.verify(key, now=T0 + timedelta(hours=23)).name == "app-1"
    with pytest.raises(Unauthenticated, match="expired"):
        keys.verify(key, now=T0 + timedelta(days=2))
    with pytest.raises(Conflict, match="revoke it first"):
        keys.create(name="app-1", role="app", created_by="admin", now=T0)
    assert keys.revoke("app-1", now=T0).revoked_at is not None
    with pytest.raises(Unauthenticated, match="revoked"):
        keys.verify(key, now=T0)
    with pytest.raises(NotFound):
        keys.revoke("app-1", now=T0)
    again, _ = keys.create(name="app-1", role="operator", created_by="admin", now=T0)
    assert keys.verify(again, now=T0).role == "operator"
    assert [(k.name, k.role, k.active(T0)) for k in keys.every()] == [
        ("app-1", "operator", True),
        ("app-1", "app", False),
    ]
    for bad in ({"name": "x", "role": "root"}, {"name": " ", "role": "app"}):
        with pytest.raises(InvalidInput):
            keys.create(created_by="admin", now=T0, **bad)  # type: ignore[arg-type]


def test_the_audit_log_appends_and_reads_newest_first(any_store: Store) -> None:
    audit = Audit(any_store)
    admin = Caller("root-admin", "admin", 1)
    first = audit.record(actor=admin, action="key.create", target="alice", source="cli", now=T0)
    audit.record(actor=admin, action="key.revoke", target="alice", source="10.0.0.7", detail={"why": "left"})
    entries = audit.read()
    assert [e.action for e in entries] == ["key.revoke", "key.create"] and entries[1].id == first
    assert entries[0].detail == {"why": "left"} and entries[0].source == "10.0.0.7"
    assert [e.target for e in audit.read(action="key.create")] == ["alice"]
