"""``nicheloop keys ...``, ``labels exclude`` and ``audit``: API keys, label provenance and the audit
log from the command line of a machine that reaches the store (an admin's shell). Every key made
or revoked and every exclusion is an audit entry."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any, NoReturn

import typer

from cli.rollout import actor
from nicheloop.errors import NicheloopError

keys_app = typer.Typer(help="API keys: make (shown once), list and revoke.", no_args_is_help=True)


def _fail(exc: Exception) -> NoReturn:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(code=1)


def _store() -> Any:
    from nicheloop.settings import get_settings
    from nicheloop.store import Store

    return Store(get_settings().db_url)


def _admin() -> Any:
    """The shell's user acting as admin (whoever reaches the store administers it), audited as
    coming from the command line."""
    from nicheloop.keys import Administration, Caller

    return Administration(_store(), actor=Caller(actor(), "admin"), source="cli")


@keys_app.command("create")
def create(
    name: str = typer.Option(..., help="Who or what uses the key (a reviewer's name is their identity)."),
    role: str = typer.Option(..., help="app, reviewer, operator or admin."),
    expires_days: float | None = typer.Option(None, help="Days until it expires (default: never)."),
) -> None:
    """Make a key; it is printed once and kept only as a hash."""
    try:
        key, info = _admin().create_key(
            name=name,
            role=role,  # checked by create
            expires_in=timedelta(days=expires_days) if expires_days else None,
        )
    except NicheloopError as exc:
        _fail(exc)
    typer.echo(
        json.dumps({"name": info.name, "role": info.role, "key": key, "expires_at": _when(info.expires_at)})
    )
    typer.secho("the key is shown this once: keep it now", fg="yellow", err=True)


@keys_app.command("list")
def list_keys() -> None:
    """Every key, newest first: name, role, state, dates (never the key)."""
    from nicheloop.contracts import utcnow
    from nicheloop.keys import ApiKeys

    now = utcnow()
    for info in ApiKeys(_store()).every():
        typer.echo(
            f"{info.name:24} {info.role:9} {info.state(now):8} "
            f"made {_when(info.created_at)} by {info.created_by}"
            + (f", expires {_when(info.expires_at)}" if info.expires_at else "")
        )


@keys_app.command("revoke")
def revoke(name: str = typer.Argument(..., help="Whose active key to revoke.")) -> None:
    """Revoke a key at once (gateways stop taking it within seconds)."""
    try:
        info = _admin().revoke_key(name)
    except NicheloopError as exc:
        _fail(exc)
    typer.echo(f"revoked the {info.role} key of {info.name}")


def _when(at: Any) -> str | None:
    return at.isoformat(timespec="seconds") if at else None


labels_app = typer.Typer(
    help="Who taught the model what: leave an actor's labels out, or vouch for them.", no_args_is_help=True
)


@labels_app.command("exclude")
def exclude(
    actor_name: str = typer.Option(..., "--actor", help="The key name whose labels to leave out."),
    reason: str = typer.Option(..., help="Why (kept with the exclusion and in the audit log)."),
) -> None:
    """Leave an actor's labels out of every training snapshot from now on (revoke their key too:
    `nicheloop keys revoke`); the next snapshot's manifest lists them."""
    try:
        new = _admin().exclude_labels(actor_name, reason=reason)
    except NicheloopError as exc:
        _fail(exc)
    typer.echo(f"{'excluded' if new else 'already excluded'}: the labels of {actor_name}")


@labels_app.command("vouch")
def vouch(
    actor_name: str = typer.Option(..., "--actor", help="The reviewer whose labels may train."),
    reason: str = typer.Option(..., help="Why (kept with the decision and in the audit log)."),
) -> None:
    """Let a reviewer's labels train although their accuracy on gold items is under the label
    gate's bar (`label_gate_min_gold_accuracy`); the other way is `labels exclude`."""
    try:
        new = _admin().vouch_labels(actor_name, reason=reason)
    except NicheloopError as exc:
        _fail(exc)
    typer.echo(f"{'vouched for' if new else 'already vouched for'}: the labels of {actor_name}")


def audit(
    action: str | None = typer.Option(None, help="Only this action, or this family: key, rollout, labels."),
    limit: int = typer.Option(50, min=1, max=10_000, help="How many entries, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """The audit log, newest first: who did what, to what, from where, when."""
    from nicheloop.keys import Audit

    for e in Audit(_store()).read(limit=limit, action=action):
        if as_json:
            typer.echo(json.dumps({**dataclasses.asdict(e), "at": _when(e.at)}))
            continue
        why = e.detail.get("reason") or ""
        typer.echo(
            f"{_when(e.at)}  {e.actor} ({e.role}) {e.action} {e.target} from {e.source}"
            + (f": {why}" if why else "")
        )
