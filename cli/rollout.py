"""``nicheloop rollout ...``: gated rollouts from the command line (the same verbs as the
controller's HTTP, :mod:`rollout.operations`), and the controller process itself."""

from __future__ import annotations

import getpass
import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import typer

from nicheloop.errors import NicheloopError

rollout_app = typer.Typer(
    help="Gated rollouts: shadow, canary steps, promotion, with automatic rollback.", no_args_is_help=True
)


def actor() -> str:
    """Who acts from this shell, for the audit trail (the OS user at the host)."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _fail(exc: Exception) -> NoReturn:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(code=1)


def _ops() -> Any:
    from nicheloop.registry import Registry
    from nicheloop.rollouts import Rollouts
    from nicheloop.settings import get_settings
    from nicheloop.store import Store
    from rollout.operations import Operations

    s = get_settings()
    return Operations(Rollouts(Store(s.db_url)), Registry(s.tracking_uri, s.model_name))


def _show(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(status))
        return
    typer.echo(render_status(status))


def render_status(st: dict[str, Any]) -> str:
    """A rollout's status for people: where it is, each gate's last verdict, what it waits for."""
    if st.get("state") == "none":
        return f"no rollout yet; champion {st.get('champion')}; waiting for {st['waiting_for']}"
    lines = [
        f"rollout {st['rollout_id']}: version {st['candidate']} against champion {st['champion']} - "
        f"{st['state']} ({st['step']}); answers {st['share']:.0%}, mirrored {st['mirror']:.0%}",
        f"  {st['in_state_s']:.0f}s in this state; {st['failures']} of {st['max_failures']} failures; "
        f"controller heard {st['heartbeat_age_s']:.0f}s ago",
    ]
    for gate in st.get("gates") or []:
        lines.append(f"  {gate.get('gate', '?'):<18} {gate.get('verdict', '?'):<5} {gate.get('reason', '')}")
    lines.append(f"  waiting for: {st['waiting_for']}")
    return "\n".join(lines)


@rollout_app.command("start")
def start(
    version: str | None = typer.Option(None, help="Version to roll out (default: the candidate alias's)."),
    plan: Path | None = typer.Option(None, help="Rollout plan YAML (default: the built-in plan)."),
    set_: list[str] = typer.Option([], "--set", help="Override a plan field: --set steps=[0.1,0.5]."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Start the candidate in shadow once it passes the offline gates; the controller takes it on."""
    from rollout.plan import load_plan

    try:
        _show(_ops().start(actor=actor(), version=version, plan=load_plan(plan, set_)), as_json)
    except NicheloopError as exc:
        _fail(exc)


@rollout_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The live (else the latest) rollout: state, shares, every gate's figures, what it waits for."""
    try:
        _show(_ops().status(), as_json)
    except NicheloopError as exc:
        _fail(exc)


def _act(action: str, reason: str, as_json: bool) -> None:
    try:
        _show(_ops().act(action, actor=actor(), reason=reason), as_json)
    except NicheloopError as exc:
        _fail(exc)


REASON = typer.Option("", help="Why (kept in the audit trail).")
JSON = typer.Option(False, "--json", help="Print JSON.")


@rollout_app.command("pause")
def pause(reason: str = REASON, as_json: bool = JSON) -> None:
    """Hold the rollout where it is; it stays until resumed, rolled back or promoted."""
    _act("pause", reason, as_json)


@rollout_app.command("resume")
def resume(reason: str = REASON, as_json: bool = JSON) -> None:
    """Resume a held rollout in the state it was held in."""
    _act("resume", reason, as_json)


@rollout_app.command("rollback")
def rollback(reason: str = REASON, as_json: bool = JSON) -> None:
    """Roll the candidate back: the champion answers everything again."""
    _act("rollback", reason, as_json)


@rollout_app.command("promote")
def promote(
    force: bool = typer.Option(False, "--force", help="Required: skip the remaining gates."),
    reason: str = typer.Option(..., help="Why the gates are skipped (kept in the audit trail)."),
    as_json: bool = JSON,
) -> None:
    """Make the candidate champion now, skipping the remaining gates (recorded with your reason)."""
    if not force:
        _fail(ValueError("promoting past the gates needs --force (and --reason)"))
    _act("promote", reason, as_json)


@rollout_app.command("history")
def history(
    rollout_id: int | None = typer.Option(None, "--id", help="One rollout's events only."),
    limit: int = typer.Option(50, min=1, help="The newest this many events."),
    as_json: bool = JSON,
) -> None:
    """The audit trail: every move, who made it, why, with the figures behind it."""
    try:
        events = _ops().history(rollout_id, limit=limit)
    except NicheloopError as exc:
        _fail(exc)
    for e in events:
        if as_json:
            typer.echo(json.dumps(e))
            continue
        typer.echo(
            f"{e['at'][:19]}  #{e['rollout_id']:<4} v{e['candidate']:<4} {e['from_state'] or '-':>11} -> "
            f"{e['to_state']:<11} {e['to_share']:>4.0%}  {e['actor']:<20} {e['reason']}"
        )


@rollout_app.command("adopt")
def adopt(
    version: str | None = typer.Option(None, help="Version to record as champion (default: the alias's)."),
    reason: str = typer.Option("adopted by hand", help="Why (kept in the audit trail)."),
) -> None:
    """Record a champion without a rollout (an install from before rollouts were recorded)."""
    try:
        typer.echo(json.dumps(_ops().adopt(actor=actor(), reason=reason, version=version)))
    except NicheloopError as exc:
        _fail(exc)


@rollout_app.command("controller")
def controller(detach: bool = typer.Option(False, help="Run in the background, managed by `stack`.")) -> None:
    """Run the rollout controller: gates on an interval, the trail on Kafka, HTTP for operators."""
    from nicheloop.settings import get_settings

    s = get_settings()
    if detach:
        from deploy.local import stack

        pid = stack.start_controller(s)
        typer.echo(
            f"rollout controller running (pid {pid}); http://{s.host}:{s.controller_port}/v1/rollouts/status"
        )
        return
    from rollout.runner import run_controller

    run_controller(s)


policy_app = typer.Typer(
    help="The retraining policy: drift proposes, labels confirm, cost decides.", no_args_is_help=True
)


@policy_app.command("explain")
def explain(
    policy: Path | None = typer.Option(
        None, help="Policy YAML (recipes/policies/*.yaml); default: the controller's (retrain_policy)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override one policy key: KEY=VALUE (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: the decision, its evidence, the policy."),
) -> None:
    """What the retraining policy decides now, by which rule, and what it waits for."""
    import time

    from nicheloop.registry import Registry
    from nicheloop.settings import get_settings
    from nicheloop.store import Store
    from rollout.policy import load_policy
    from rollout.retrain import PolicyEvidence

    s = get_settings()
    try:
        rules = load_policy(policy or s.retrain_policy, set_)
        source = PolicyEvidence(Store(s.db_url), Registry(s.tracking_uri, s.model_name))
        out = source.explained(time.time(), rules)
    except NicheloopError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(out))
        return
    typer.echo(render_decision(out))


def render_decision(out: dict[str, Any]) -> str:
    """A policy decision for people: the verdict and its reason, then the evidence it weighed."""
    d, ev = out["decision"], out["evidence"]
    lines = [f"{d['action']} ({d['rule']}): {d['reason']}"]
    if out.get("paused"):
        p = out["paused"]
        lines.append(f"  paused by {p['by']} at {p['at']}: {p['reason']} (it decides but starts no run)")
    if out.get("stopgap_due"):
        lines.append(f"  stopgap due: {out['stopgap_due']}")
    lines += [
        f"  {key:<22} {_figure(key, value)}"
        for key, value in ev.items()
        if value not in (None, {}) and key != "now"
    ]
    return "\n".join(lines)


def _figure(key: str, value: Any) -> str:
    """One evidence figure as a person reads it (per class: "crazing 12, scratches 3"; a moment, in
    seconds since the epoch: its UTC time)."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if key.endswith(("_since", "_at")) and isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _switch(pause: bool, reason: str) -> None:
    """Pause or resume the policy in the store, audited as this shell's user."""
    from nicheloop.keys import Audit, Caller
    from nicheloop.rollouts import Rollouts
    from nicheloop.settings import get_settings
    from nicheloop.store import Store
    from rollout.retrain import switch_policy

    store = Store(get_settings().db_url)
    who = Caller(name=actor(), role="operator")
    new = switch_policy(Rollouts(store), Audit(store), pause=pause, who=who, reason=reason, source="cli")
    state = "paused: it decides but starts no run" if pause else "running: a train verdict starts a run"
    typer.echo(f"the retraining policy is {state}" + ("" if new else " (it already was)"))


@policy_app.command("pause")
def pause_policy(reason: str = typer.Option(..., help="Why (kept in the audit log).")) -> None:
    """Stop the policy starting runs (it still decides and says so); a run going on finishes."""
    _switch(True, reason)


@policy_app.command("resume")
def resume_policy(reason: str = typer.Option(..., help="Why (kept in the audit log).")) -> None:
    """Let the policy start runs again."""
    _switch(False, reason)
