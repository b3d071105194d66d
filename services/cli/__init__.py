"""The `drip` command: services, the demo, the report, the local stack (Typer).

`serve`, `follow` and `report` connect to what `DRIP_KAFKA_BOOTSTRAP` and
`DRIP_DATABASE_URL` name and never start anything; `demo` and `infra` are developer
tools that start the local stack (scripts/infra.sh) when those are not set.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from psycopg_pool import ConnectionPool
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from projections import campaign_stats, dead_letters, schema
from services.bootstrap import asyncapi_document, build, build_pool
from services.cli.campaigns import campaign_app, clinic_app
from services.cli.dlq import dlq_app, enrollment_app
from services.cli.ops import projections_app, topics_app
from services.cli.output import console
from services.logs import configure as configure_logs
from services.settings import Settings

app = typer.Typer(help="drip: event-sourced drip campaigns on Kafka and PostgreSQL.",
                  no_args_is_help=True)
infra_app = typer.Typer(help="Local Kafka (KRaft) and PostgreSQL, on loopback.")
app.add_typer(infra_app, name="infra")
app.add_typer(clinic_app, name="clinic")
app.add_typer(campaign_app, name="campaign")
app.add_typer(dlq_app, name="dlq")
app.add_typer(enrollment_app, name="enrollment")
app.add_typer(projections_app, name="projections")
app.add_typer(topics_app, name="topics")


@app.callback()
def _configure() -> None:
    """drip: event-sourced drip campaigns on Kafka and PostgreSQL."""
    configure_logs(Settings())


def settings_with_local_stack() -> Settings:
    """Settings whose endpoints come from DRIP_* or from the local stack (devtools)."""
    from services.devtools import infra

    endpoints = infra.endpoints_from_env_or_up()
    os.environ.setdefault("DRIP_KAFKA_BOOTSTRAP", endpoints.kafka_bootstrap)
    os.environ.setdefault("DRIP_DATABASE_URL", endpoints.database_url)
    return Settings()


@infra_app.command("up")
def infra_up() -> None:
    """Install (if missing) and start Kafka and PostgreSQL; print their endpoints."""
    from services.devtools import infra

    typer.echo(infra.run("up"), nl=False)


@infra_app.command("down")
def infra_down() -> None:
    """Stop the local Kafka and PostgreSQL."""
    from services.devtools import infra

    infra.run("down")


@infra_app.command("status")
def infra_status() -> None:
    """One line per service on stderr; exit 3 when one is down."""
    from services.devtools import infra

    infra.run("status")


def read_report(pool: ConnectionPool, clinic: str | None = None) -> dict[str, Any]:
    """The report, from the PostgreSQL read models only: one clinic's campaigns (and every
    dead letter), or `{"clinics": {clinic: report}, "dead_letters": n}`."""
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute(schema.DDL)  # idempotent: a report before any run is an empty report
        if clinic is not None:
            out = campaign_stats.report(cur, clinic)
        else:
            out = {"clinics": {c: campaign_stats.report(cur, c)
                               for c in campaign_stats.clinics(cur)}}
        out["dead_letters"] = dead_letters.count(cur)
    return out


def print_report(report: dict[str, Any], clinic: str | None = None) -> None:
    table = Table(title="drip report (from the PostgreSQL projections)"
                  + (f": clinic {clinic}" if clinic else ""))
    table.add_column("campaign / step", no_wrap=True)
    funnel = [m for m in ("delivered", "failed", "bounced", "opened", "clicked")
              if any(m in n for c in report["campaigns"].values() for n in c["steps"].values())]
    for col in ("enrolled", "completed", "sent", "skipped", *funnel):
        table.add_column(col, justify="right")
    table.add_column("stopped", justify="right")
    blank = [""] * len(funnel)
    for name, c in report["campaigns"].items():
        table.add_row(f"[bold]{name}[/bold]", f"{c['enrolled']:,}", f"{c['completed']:,}",
                      "", "", *blank, f"{sum(c['stopped'].values()):,}")
        for step, n in c["steps"].items():
            table.add_row(f"  {step}", "", "", f"{n['sent']:,}", f"{n['skipped']:,}",
                          *(f"{n.get(m, 0):,}" for m in funnel), "")
        for split, variants in c.get("variants", {}).items():
            for variant, v in variants.items():
                sent = sum(v["sent"].values())
                table.add_row(f"  {split} = {variant}", f"{v['assigned']:,}", "", f"{sent:,}",
                              "", *blank, "")
        for step, outcomes in c.get("branches", {}).items():
            for outcome, n in outcomes.items():
                table.add_row(f"  {step} → {outcome}", f"{n:,}", "", "", "", *blank, "")
    console.print(table)
    stops = "; ".join(f"{name}: {reason} {n:,}" for name, c in report["campaigns"].items()
                      for reason, n in sorted(c["stopped"].items())) or "none"
    ignored = ", ".join(f"{k} {v:,}" for k, v in report["ignored"].items()) or "none"
    console.print(f"stops by reason: {stops}")
    console.print(f"bookings that enrolled nobody: {ignored}; "
                  f"dead letters: {report['dead_letters']:,}")


@app.command()
def report(as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
           clinic: Annotated[str | None, typer.Option(
               help="Only this clinic (default: every clinic, each apart)")] = None) -> None:
    """Campaign statistics read from the projections, per clinic."""
    with build_pool(Settings()) as pool:
        data = read_report(pool, clinic)
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    elif clinic is not None:
        print_report(data, clinic)
    else:
        for name, one in data["clinics"].items():
            print_report({**one, "dead_letters": data["dead_letters"]}, name)
        if not data["clinics"]:
            console.print("no campaigns yet")


@app.command()
def demo(
    csv: Annotated[Path | None, typer.Option(
        help="Appointments CSV (default: DRIP_DATASET_CSV)")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows")] = None,
    deliver: Annotated[bool, typer.Option(
        help="Also deliver every message through the gateways to local sinks (§6)")] = False,
    failure_rate: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="With --deliver: share of first attempts the HTTP provider "
                               "fails with a 503 (retried)")] = 0.05,
) -> None:
    """Start everything, replay real appointments through the two demo campaigns
    (campaigns/appointment-reminders.yaml, campaigns/no-show-recovery.yaml), print the
    report: the backtest of those two files."""
    from services.devtools.demo import DEMO_CAMPAIGNS, DEMO_CLINIC

    _backtest(list(DEMO_CAMPAIGNS), DEMO_CLINIC, csv, limit, as_json=False, deliver=deliver,
              failure_rate=failure_rate)


@app.command()
def backtest(
    campaigns: Annotated[list[Path], typer.Argument(help="Campaign files (YAML or JSON)")],
    clinic: Annotated[Path | None, typer.Option(
        help="Clinic file (default: campaigns/clinics/vitoria.yaml, the data set's clinic)")] = None,
    csv: Annotated[Path | None, typer.Option(
        help="Appointments CSV (default: DRIP_DATASET_CSV)")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON")] = False,
) -> None:
    """Run campaign files (drafts too) over recorded history from empty state, through the
    real services on a simulated clock, and print the funnel they would have produced:
    enrolled, sent and skipped per step, stopped by reason, per variant. Resets the
    database and topics it is pointed at."""
    from services.devtools.demo import DEMO_CLINIC

    _backtest(campaigns, clinic or DEMO_CLINIC, csv, limit, as_json)


def _backtest(campaigns: list[Path], clinic: Path, csv: Path | None, limit: int | None,
              as_json: bool, deliver: bool = False, failure_rate: float = 0.0) -> None:
    from services.application.definitions import DefinitionError
    from services.devtools.demo import load_definitions, run_demo

    try:
        load_definitions(campaigns, clinic)  # refuse a bad file before starting anything
    except DefinitionError as exc:
        for line in exc.problems:
            console.print(f"[red]error[/red] {line}", highlight=False)
        raise typer.Exit(2) from None
    settings = settings_with_local_stack()
    path = csv or settings.dataset_csv
    if path is None:
        raise typer.BadParameter("give --csv PATH or set DRIP_DATASET_CSV", param_hint="--csv")
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  disable=as_json) as bar:
        def progress(total: int) -> Callable[[int], None]:
            task = bar.add_task("upstream events handled", total=total)
            return lambda n: bar.advance(task, n)
        result = run_demo(settings, path, limit, progress, campaigns, clinic, deliver,
                          failure_rate)
    from services.application.definitions import load_clinic

    with build_pool(settings) as pool:
        report = read_report(pool, load_clinic(clinic).clinic_id)
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    outcomes = sum(n["sent"] + n["skipped"] for c in report["campaigns"].values()
                   for n in c["steps"].values())
    r, per_s = result.replay, 1 / max(result.replay.seconds, 1e-9)
    console.print(
        f"replay {r.seconds:.1f} s (wall {result.wall_seconds:.1f} s): "
        f"{r.upstream_events:,} upstream events ({r.upstream_events * per_s:,.0f}/s); "
        f"{outcomes:,} step outcomes, sent or skipped ({outcomes * per_s:,.0f}/s); "
        f"{result.domain_events:,} domain events ({result.domain_events * per_s:,.0f}/s); "
        f"{r.fired:,} timers fired; {result.dispatched:,} dispatch requests")
    print_report(report, load_clinic(clinic).clinic_id)
    if result.delivered is not None:
        print_delivery(result.delivered)


def print_delivery(d: Any) -> None:
    """The gateways' outcomes per channel and what the local sinks received."""
    table = Table(title="delivery (gateways → local sinks)")
    for col in ("channel", "sent", "failed", "still sending"):
        table.add_column(col, justify="right" if col != "channel" else "left")
    for channel, states in sorted(d.ledger.items()):
        table.add_row(channel, f"{states.get('sent', 0):,}", f"{states.get('failed', 0):,}",
                      f"{states.get('sending', 0):,}")
    console.print(table)
    console.print(
        f"SMTP sink: {d.email_unique:,} messages by Message-ID, {d.email_duplicates:,} "
        f"duplicates; HTTP provider: {d.provider_unique:,} messages by Idempotency-Key, "
        f"{d.provider_duplicates:,} duplicates, {d.provider_attempts:,} requests, "
        f"{d.callbacks:,} delivery callbacks ({d.opened:,} opened, {d.clicked:,} clicked); "
        f"gateway attempts {d.gateway_attempts:,}")


@app.command()
def asyncapi(yaml: Annotated[bool, typer.Option("--yaml", help="YAML instead of JSON")] = False,
             ) -> None:
    """Print the AsyncAPI document of drip's topics and contracts (§9)."""
    spec = asyncapi_document(Settings()).to_specification()
    typer.echo(spec.to_yaml() if yaml else spec.to_json())


@app.command("follow")
def follow_log() -> None:
    """Run the event-log followers (projector, dispatcher) until interrupted."""
    from services.runtime import follow

    _run(follow, build(Settings()))


@app.command("gateway")
def gateway_command(channels: Annotated[list[str], typer.Argument(
        help="Channels this gateway delivers: email, sms, whatsapp")]) -> None:
    """Deliver dispatch requests of these channels (§6): e-mail over SMTP, SMS and WhatsApp
    through the HTTP provider; delivery callbacks on POST /webhooks/{provider}."""
    from services.bootstrap import build_gateway
    from services.runtime import gateway

    try:
        process = build_gateway(Settings(), channels)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="CHANNELS") from None
    _run(gateway, process)


@app.command("api")
def api_command() -> None:
    """Serve the HTTP API, the dashboard and /metrics alone (uvicorn on DRIP_API_HOST:
    DRIP_API_PORT), without the consumers: commands still go through the event store."""
    from services.runtime import api_only

    settings = Settings()
    asyncio.run(api_only(settings))


@app.command()
def serve() -> None:
    """Run every service on the wall clock until interrupted."""
    from services.runtime import serve as serve_all

    _run(serve_all, build(Settings()))


def _run(main: Callable[[Any], Any], services: Any) -> None:
    try:
        asyncio.run(main(services))
    finally:
        services.close()


if __name__ == "__main__":
    app()
