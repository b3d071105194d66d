"""Operators' commands (§8): `drip dlq list | show ID | redrive ID… | redrive --all
[--reason TEXT]` and `drip enrollment history ID [--at TIME]`."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from projections import dead_letters, schema
from services.application.app import event_time
from services.bootstrap import build_application, build_pool
from services.cli.output import console, err
from services.ops_dlq import redrive
from services.settings import Settings

dlq_app = typer.Typer(help="Dead letters (§8): list, show, redrive.", no_args_is_help=True)
enrollment_app = typer.Typer(help="Enrollments (§8): history and time travel.",
                             no_args_is_help=True)


def _entries(**kwargs: Any) -> list[dead_letters.Entry]:
    with build_pool(Settings()) as pool, pool.connection() as conn, conn.cursor() as cur:
        cur.execute(schema.DDL)
        return dead_letters.entries(cur, **kwargs)


@dlq_app.command("list")
def dlq_list(reason: Annotated[str | None, typer.Option(
                 help="Only those whose reason contains TEXT")] = None,
             pending: Annotated[bool, typer.Option(
                 help="Only those not redriven yet")] = False,
             limit: int = 1000) -> None:
    """Dead letters, oldest first: id, origin, reason, whether redriven."""
    table = Table("id", "refused at", "topic[partition]@offset", "consumer", "reason",
                  "redriven to")
    for e in _entries(reason=reason, pending_only=pending, limit=limit):
        d = e.letter
        table.add_row(str(e.id), f"{e.created_at:%Y-%m-%d %H:%M:%S}" if e.created_at else "",
                      f"{d.topic}[{d.partition}]@{d.offset}", d.consumer, d.reason,
                      e.redriven_to or "")
    console.print(table)


@dlq_app.command("show")
def dlq_show(letter_id: Annotated[int, typer.Argument(help="The dead letter's id")]) -> None:
    """One dead letter as JSON: reason, original topic, partition, offset, key, headers
    and payload (text, or base64-free hex when it is not UTF-8)."""
    found = _entries(ids=[letter_id])
    if not found:
        err.print(f"[red]error[/red] no dead letter {letter_id}")
        raise typer.Exit(3)
    e, d = found[0], found[0].letter
    typer.echo(json.dumps({
        "id": e.id, "reason": d.reason, "consumer": d.consumer, "topic": d.topic,
        "partition": d.partition, "offset": d.offset, "refused_at": e.created_at,
        "redriven_at": e.redriven_at, "redriven_to": e.redriven_to, "key": _text(d.key),
        "headers": {k: _text(v) for k, v in d.headers}, "payload": _text(d.value)},
        indent=2, default=str, ensure_ascii=False))


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return "hex:" + raw.hex()


@dlq_app.command("redrive")
def dlq_redrive(
    ids: Annotated[list[int] | None, typer.Argument(help="Dead letter ids")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter not redriven yet")] = False,
    reason: Annotated[str | None, typer.Option(
        help="With --all: only those whose reason contains TEXT")] = None,
    again: Annotated[bool, typer.Option(help="Also those already redriven")] = False,
) -> None:
    """Republish dead letters, unchanged, to their original topics, once the fix has
    shipped: each is consumed again and either applies or comes back with a new reason."""
    if bool(ids) == all_:
        raise typer.BadParameter("give dead letter ids or --all")
    if reason is not None and not all_:
        raise typer.BadParameter("--reason goes with --all")
    found = _entries(ids=ids or [], reason=reason, pending_only=all_ and not again,
                     limit=1_000_000)
    missing = set(ids or []) - {e.id for e in found}
    if missing:
        err.print(f"[red]error[/red] no dead letter {', '.join(map(str, sorted(missing)))}")
        raise typer.Exit(3)
    todo = [e for e in found if again or e.redriven_at is None]
    for e in found:
        if e not in todo:
            console.print(f"{e.id}: already redriven to {e.redriven_to} (--again to repeat)")
    settings = Settings()
    with build_pool(settings) as pool, Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("redriving", total=len(todo))
        done = asyncio.run(redrive(settings, pool, todo,
                                   lambda n: bar.advance(task, n)))
    for letter_id, to in done:
        console.print(f"{letter_id}: redriven to {to}")


@enrollment_app.command("history")
def enrollment_history(
    enrollment_id: Annotated[UUID, typer.Argument(help="The enrollment id")],
    at: Annotated[datetime | None, typer.Option(
        help="Only what had happened by then (ISO-8601; UTC without an offset)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
) -> None:
    """The enrollment's exact domain events, and the state they produce — now, or at any
    past time with --at (§8 time travel)."""
    until = None if at is None else (at.replace(tzinfo=UTC) if at.tzinfo is None
                                     else at.astimezone(UTC))
    app = build_application(Settings())
    try:
        events, state = app.history(enrollment_id, until)
        everything, _ = app.history(enrollment_id) if until is not None else (events, state)
    finally:
        app.close()
    if not everything:
        err.print(f"[red]error[/red] no enrollment {enrollment_id}")
        raise typer.Exit(3)
    shown = [{"version": e.originator_version, "event": type(e).__name__,
              "at": event_time(e).isoformat(),
              "data": {k: v for k, v in vars(e).items()
                       if k not in ("originator_id", "originator_version", "timestamp")}}
             for e in events]
    summary = None if state is None else {
        "status": str(state.status), "campaign_version": state.campaign_version,
        "next_step": state.pending_step if state.pending_due else None,
        "next_due_at": state.pending_due.isoformat() if state.pending_due else None,
        "stop_reason": state.stop_reason or state.ignore_reason,
        "sent_steps": list(state.sent_steps)}
    if as_json:
        typer.echo(json.dumps({"enrollment_id": str(enrollment_id),
                               "at": until.isoformat() if until else None,
                               "events": shown, "state": summary}, indent=2, default=str))
        return
    table = Table("v", "at (UTC)", "event", "details",
                  title=f"enrollment {enrollment_id}" + (f" at {until:%Y-%m-%d %H:%M:%S}Z"
                                                         if until else ""))
    for e in shown:
        details = ", ".join(f"{k}={v}" for k, v in e["data"].items()
                            if k not in ("at", "cause") and v not in (None, "", {}, []))
        table.add_row(str(e["version"]), e["at"][:19], e["event"], details[:120])
    console.print(table)
    console.print(f"state: {summary}" if summary else "state: not started yet at that time")
