"""The `drip` command: infrastructure, services, the demo, the report (Typer)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from contracts.topics import Topics
from projections import campaign_stats, dead_letters, schema
from services import infra
from services.settings import Settings

app = typer.Typer(help="drip: event-sourced drip campaigns on Kafka and PostgreSQL.",
                  no_args_is_help=True)
infra_app = typer.Typer(help="Local Kafka (KRaft) and PostgreSQL, on loopback.")
app.add_typer(infra_app, name="infra")
console = Console()


def settings_with_infra() -> Settings:
    """Settings whose endpoints come from DRIP_* or from the stack `infra up` starts."""
    endpoints = infra.endpoints_from_env_or_up()
    os.environ.setdefault("DRIP_KAFKA_BOOTSTRAP", endpoints.kafka_bootstrap)
    os.environ.setdefault("DRIP_DATABASE_URL", endpoints.database_url)
    return Settings()


@infra_app.command("up")
def infra_up() -> None:
    """Install (if missing) and start Kafka and PostgreSQL; print their endpoints."""
    e = infra.up()
    console.print(f"DRIP_KAFKA_BOOTSTRAP={e.kafka_bootstrap}\nDRIP_DATABASE_URL={e.database_url}")


@infra_app.command("down")
def infra_down() -> None:
    """Stop the local Kafka and PostgreSQL."""
    infra.down()


@infra_app.command("status")
def infra_status() -> None:
    console.print(infra.status())


def read_report(settings: Settings) -> dict:
    """The report, from the PostgreSQL read models only."""
    with psycopg.connect(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute(schema.DDL)  # idempotent: a report before any run is an empty report
        out = campaign_stats.report(cur)
        out["dead_letters"] = dead_letters.count(cur)
    return out


def print_report(report: dict) -> None:
    table = Table(title="drip report (from the PostgreSQL projections)")
    table.add_column("campaign / step", no_wrap=True)
    for col in ("enrolled", "completed", "sent", "skipped"):
        table.add_column(col, justify="right")
    table.add_column("stopped", justify="right")
    for name, c in report["campaigns"].items():
        table.add_row(f"[bold]{name}[/bold]", f"{c['enrolled']:,}", f"{c['completed']:,}",
                      "", "", f"{sum(c['stopped'].values()):,}")
        for step, n in c["steps"].items():
            table.add_row(f"  {step}", "", "", f"{n['sent']:,}", f"{n['skipped']:,}", "")
    console.print(table)
    stops = "; ".join(f"{name}: {reason} {n:,}" for name, c in report["campaigns"].items()
                      for reason, n in sorted(c["stopped"].items())) or "none"
    ignored = ", ".join(f"{k} {v:,}" for k, v in report["ignored"].items()) or "none"
    console.print(f"stops by reason: {stops}")
    console.print(f"bookings that enrolled nobody: {ignored}; "
                  f"dead letters: {report['dead_letters']:,}")


@app.command()
def report(as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False) -> None:
    """Campaign statistics read from the projections."""
    data = read_report(settings_with_infra())
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        print_report(data)


@app.command()
def demo(
    csv: Annotated[Path, typer.Option(help="Appointments CSV")] = None,  # type: ignore[assignment]
    limit: Annotated[int | None, typer.Option(help="Only the first N rows")] = None,
) -> None:
    """Start everything, replay real appointments through two campaigns, print the report."""
    from services import dataset
    from services.demo import run_demo

    settings = settings_with_infra()
    path = csv or dataset.DEFAULT_CSV
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
        def progress(total: int, _: int):
            task = bar.add_task("upstream events handled", total=total)
            return lambda n: bar.advance(task, n)
        result = run_demo(settings, path, limit, progress)
    report = read_report(settings)
    outcomes = sum(n["sent"] + n["skipped"] for c in report["campaigns"].values()
                   for n in c["steps"].values())
    r, per_s = result.replay, 1 / max(result.replay.seconds, 1e-9)
    console.print(
        f"replay {r.seconds:.1f} s (wall {result.wall_seconds:.1f} s): "
        f"{r.upstream_events:,} upstream events ({r.upstream_events * per_s:,.0f}/s); "
        f"{outcomes:,} step outcomes, sent or skipped ({outcomes * per_s:,.0f}/s); "
        f"{result.domain_events:,} domain events ({result.domain_events * per_s:,.0f}/s); "
        f"{r.fired:,} timers fired; {result.dispatched:,} dispatch requests")
    print_report(report)


@app.command()
def asyncapi(yaml: Annotated[bool, typer.Option("--yaml", help="YAML instead of JSON")] = False,
             ) -> None:
    """Print the AsyncAPI document of drip's topics and contracts (§9)."""
    from services.asyncapi import document

    spec = document(Topics(Settings().topic_prefix)).to_specification()
    typer.echo(spec.to_yaml() if yaml else spec.to_json())


@app.command("follow")
def follow_log() -> None:
    """Run the event-log followers (projector, dispatcher) until interrupted."""
    from services.bootstrap import build
    from services.runtime import follow

    asyncio.run(follow(build(settings_with_infra())))


@app.command()
def serve() -> None:
    """Run every service on the wall clock until interrupted."""
    from services.bootstrap import build
    from services.runtime import run_services

    settings = settings_with_infra()
    services = build(settings)
    asyncio.run(run_services(services, lambda: asyncio.Event().wait()))


if __name__ == "__main__":
    app()
