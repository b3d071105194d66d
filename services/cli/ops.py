"""Operators' replays (§8): `drip projections rebuild NAME|--all` rebuilds read models from
the event log while the live ones keep serving (projections/rebuild.py), and `drip topics
replay TOPIC --from-offset N|--from-time T` re-applies an upstream topic's records without
duplicating their effects (services/ops_replay.py).

Both connect to what `DRIP_DATABASE_URL` and `DRIP_KAFKA_BOOTSTRAP` name and never start
anything. An unknown projection or topic exits 3, a refused rebuild 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from projections import registry
from projections.rebuild import RebuildError, rebuild
from services.application.app import DripApplication
from services.bootstrap import build_application, build_pool
from services.ops_replay import replay_topic, upstream_topic
from services.settings import Settings

projections_app = typer.Typer(help="Read models (§7, §8): rebuild from the event log, online.",
                              no_args_is_help=True)
topics_app = typer.Typer(help="Upstream topics (§8): re-apply records from an offset or a "
                              "time.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


@projections_app.callback()
def _projections() -> None:
    """Read models (§7, §8): rebuild from the event log, online."""


@topics_app.callback()
def _topics() -> None:
    """Upstream topics (§8): re-apply records from an offset or a time."""


@contextmanager
def _bar() -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """`task(description)` → a `progress(done, total)` callback drawing one bar."""
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bar:
        def task(description: str) -> Callable[[int, int], None]:
            found = bar.add_task(description, total=None)
            return lambda done, total: bar.update(found, completed=done, total=total)
        yield task


@contextmanager
def _application(settings: Settings) -> Iterator[DripApplication]:
    app = build_application(settings)
    try:
        yield app
    finally:
        app.close()


@projections_app.command("rebuild")
def projections_rebuild(
    name: Annotated[str | None, typer.Argument(help="The projection (see --all)")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every projection, one after another")
                    ] = False,
    page: Annotated[int, typer.Option(min=1, help="Notifications per transaction")] = 5000,
) -> None:
    """Rebuild a projection's tables from position 0 of the event log in a scratch schema,
    then swap them in: reads go on meanwhile, the projector pauses only for the swap."""
    if (name is None) != all_:
        raise typer.BadParameter(
            f"give a projection ({', '.join(p.name for p in registry.PROJECTIONS)}) or --all")
    try:
        chosen = registry.PROJECTIONS if all_ else (registry.named(name or ""),)
    except KeyError as exc:
        err.print(f"[red]error[/red] {exc.args[0]}", highlight=False)
        raise typer.Exit(3) from None
    settings = Settings()
    with _application(settings) as app, build_pool(settings) as pool, _bar() as task:
        for projection in chosen:
            try:
                with pool.connection() as conn:
                    done = rebuild(conn, projection, app.notifications,
                                   app.mapper.to_domain_event, page=page,
                                   progress=task(f"rebuilding {projection.name}"))
            except RebuildError as exc:
                err.print(f"[red]error[/red] {exc}", highlight=False)
                raise typer.Exit(1) from None
            console.print(f"{done.name}: swapped in at log position {done.position:,} "
                          f"({done.notifications:,} notifications replayed)")


@topics_app.command("replay")
def topics_replay(
    topic: Annotated[str, typer.Argument(help="appointments, patients or messages (or the "
                                              "full topic name)")],
    from_offset: Annotated[int | None, typer.Option(
        min=0, help="Replay from this offset in every partition")] = None,
    from_time: Annotated[str | None, typer.Option(
        help="Replay from the first record written to Kafka at or after this ISO-8601 time "
             "(UTC without an offset)")] = None,
) -> None:
    """Re-apply an upstream topic's records (up to its end now) through the live use case,
    under the consumer `<group>.replay`: triggers and stops already applied are not applied
    twice (services/ops_replay.py names what still is)."""
    settings = Settings()
    if (from_offset is None) == (from_time is None):
        raise typer.BadParameter("give --from-offset N or --from-time T")
    since = None if from_time is None else _utc(from_time)
    try:
        name = upstream_topic(settings, topic)
    except ValueError as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(3) from None
    with _application(settings) as app, build_pool(settings) as pool, _bar() as task:
        result = asyncio.run(replay_topic(settings, app, pool, name, from_offset=from_offset,
                                          from_time=since, progress=task(f"replaying {name}")))
    console.print(f"{result.records:,} records of {result.topic} re-applied as "
                  f"{result.consumer}: {result.domain_events:,} new domain events, "
                  f"{result.refused:,} refused")


def _utc(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"not an ISO-8601 time: {text!r}",
                                 param_hint="--from-time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)
