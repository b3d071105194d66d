"""`drip backtest` and `drip demo`: campaign files run over recorded history (the 110,527
real appointments) on real Kafka and PostgreSQL, through the real services, with a
simulated clock, from empty state (issue 2 §4, issue 7 backtest). The demo is the
backtest of the two demo campaigns (campaigns/appointment-reminders.yaml and
campaigns/no-show-recovery.yaml) for the demo clinic (campaigns/clinics/vitoria.yaml)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from domain.campaign import CampaignDefinition
from domain.clinic import ClinicSettings
from projections import consumer_positions, gateway_sends, schema
from services.adapters import kafka_admin
from services.adapters.clock import SimulatedClock
from services.adapters.kafka_security import client_options
from services.application.definitions import load_campaign, load_clinic
from services.bootstrap import Services, build, build_pool, topic_specs
from services.devtools import dataset
from services.devtools.replay import Replay, ReplayStalled, ReplayStats
from services.runtime import child, drain, running
from services.settings import Settings

SINK_OPEN_RATE = 0.5  # share of SMS/WhatsApp messages the provider sink reports opened
SINK_CLICK_RATE = 0.1  # … and clicked


@dataclass
class Delivered:
    """What the local sinks received (`drip demo --deliver`), counted by idempotency key."""

    ledger: dict[str, dict[str, int]]  # gateway_sends: channel -> state -> n
    email_unique: int
    email_duplicates: int
    provider_unique: int
    provider_duplicates: int
    provider_attempts: int
    callbacks: int
    gateway_attempts: int
    opened: int = 0
    clicked: int = 0


@dataclass
class DemoResult:
    replay: ReplayStats
    wall_seconds: float
    domain_events: int
    dispatched: int
    delivered: Delivered | None = None


def reset(settings: Settings) -> None:
    """Empty state: drop every table, delete and recreate the topics."""
    with build_pool(settings) as pool, pool.connection() as conn:
        schema.reset(conn)
    asyncio.run(kafka_admin.recreate_topics(settings.kafka_bootstrap, topic_specs(settings),
                                            client_options(settings)))


GALLERY = Path(__file__).resolve().parents[2] / "campaigns"
"""The ready-made campaigns and the demo clinic (campaigns/ in the repository)."""
DEMO_CAMPAIGNS = (GALLERY / "appointment-reminders.yaml", GALLERY / "no-show-recovery.yaml")
DEMO_CLINIC = GALLERY / "clinics" / "vitoria.yaml"


def load_definitions(campaigns: Sequence[Path], clinic: Path = DEMO_CLINIC,
                     ) -> tuple[ClinicSettings, list[CampaignDefinition]]:
    """The clinic and campaign files of a backtest. Raises `DefinitionError`."""
    settings = load_clinic(clinic)
    return settings, [load_campaign(path, settings) for path in campaigns]


def define_campaigns(services: Services, clinic: ClinicSettings | None = None,
                     definitions: Sequence[CampaignDefinition] | None = None) -> None:
    """Apply the clinic and define and activate the campaigns (default: the demo's)."""
    if clinic is None or definitions is None:
        clinic, definitions = load_definitions(DEMO_CAMPAIGNS)
    services.app.apply_clinic(clinic)
    for definition in definitions:
        services.app.define_campaign(definition)


def run_demo(settings: Settings, csv: Path, limit: int | None,
             progress: Callable[[int], Callable[[int], None]],
             campaigns: Sequence[Path] = DEMO_CAMPAIGNS, clinic: Path = DEMO_CLINIC,
             deliver: bool = False, failure_rate: float = 0.0) -> DemoResult:
    """Reset, apply the clinic and activate the campaigns (drafts included: a backtest
    shows what a draft would do), replay the file through the services, drain.

    With `deliver`, the patients' (synthetic) contact points are published first, and
    the gateways deliver every message to local sinks — a real SMTP server and a real HTTP
    provider that fails `failure_rate` of first attempts with a 503 — which confirm
    delivery through the gateway's webhook, and report `SINK_OPEN_RATE` of SMS/WhatsApp
    messages opened and `SINK_CLICK_RATE` clicked; the run ends when every message has its
    outcome recorded on its enrollment.

    `progress(total)` returns the callback the replay calls with each chunk's size.
    Raises `DefinitionError` before touching anything when a file is invalid.
    """
    started = time.monotonic()
    clinic_settings, definitions = load_definitions(campaigns, clinic)
    reset(settings)
    timeline = dataset.timeline(csv, limit)
    if deliver:
        timeline = sorted([*dataset.contacts(csv, limit), *timeline])
    clock = SimulatedClock(timeline[0].time if timeline else datetime.now(UTC))
    with contextlib.ExitStack() as stack:
        sinks = None
        if deliver:
            sinks, settings = stack.enter_context(_sinks(settings, failure_rate))
        services = build(settings, clock)
        stack.callback(services.close)
        define_campaigns(services, clinic_settings, definitions)

        async def body() -> ReplayStats:
            async with contextlib.AsyncExitStack() as running_stack:
                await running_stack.enter_async_context(running(services, followers="process"))
                if sinks is not None:  # the gateways in a process of their own
                    gateway = asyncio.create_task(child(
                        ["gateway", "email", "sms", "whatsapp"],
                        settings.model_copy(update={"log_level": "warning"})))
                    running_stack.push_async_callback(_cancel, gateway)
                replay = Replay(services, clock, settings.replay_chunk)
                stats = await replay.run(timeline, progress(len(timeline)))
                await drain(services)
                if sinks is not None:
                    await _until_delivered(services, sinks, gateway)
                return stats

        stats = asyncio.run(body())
        events = services.app.recorder.max_notification_id() or 0
        delivered = None
        if sinks is not None:
            with services.pool.connection() as conn, conn.cursor() as cur:
                ledger = gateway_sends.counts(cur)
                cur.execute("SELECT coalesce(sum(attempts), 0) FROM gateway_sends")
                (attempts,) = cur.fetchone() or (0,)
            found = sinks.stats()
            delivered = Delivered(ledger, found["email_unique"], found["email_duplicates"],
                                  found["provider_unique"], found["provider_duplicates"],
                                  found["provider_attempts"], found["callbacks_sent"],
                                  int(attempts), found["opened"], found["clicked"])
        return DemoResult(stats, time.monotonic() - started, events,
                          services.dispatcher.relayed_total(), delivered)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Sinks:
    """The sinks' process (services/devtools/sink_process.py) and its counters."""

    def __init__(self, process: subprocess.Popen[bytes], stats_port: int) -> None:
        self.process, self.stats_port = process, stats_port

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats",
                                    timeout=10) as response:
            found: dict[str, int] = json.loads(response.read())
        return found


@contextlib.contextmanager
def _sinks(settings: Settings, failure_rate: float) -> Iterator[tuple[Sinks, Settings]]:
    """The local SMTP server and HTTP provider in a process of their own, and settings
    pointing the gateway at them."""
    smtp, provider, stats, webhook = (_free_port() for _ in range(4))
    callback = f"http://127.0.0.1:{webhook}/webhooks/{settings.provider_name}"
    process = subprocess.Popen(
        [sys.executable, "-m", "services.devtools.sink_process", "--smtp-port", str(smtp),
         "--provider-port", str(provider), "--stats-port", str(stats),
         "--secret", settings.provider_secret.get_secret_value(), "--callback-url", callback,
         "--callback-secret", settings.webhook_secret.get_secret_value(),
         "--failure-rate", str(failure_rate), "--open-rate", str(SINK_OPEN_RATE),
         "--click-rate", str(SINK_CLICK_RATE)], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the local sinks did not start (exit {process.poll()})")
        yield Sinks(process, stats), settings.model_copy(update={
            "smtp_host": "127.0.0.1", "smtp_port": smtp,
            "provider_url": f"http://127.0.0.1:{provider}", "gateway_host": "127.0.0.1",
            "gateway_port": webhook})
    finally:
        process.terminate()
        process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _until_delivered(services: Services, sinks: Sinks, gateway: asyncio.Task[None],
                           stall_seconds: float = 120.0) -> None:
    """Wait until every dispatched message has its outcome in the gateways' ledger, every
    provider callback came back, and every receipt was recorded on its enrollment."""
    deadline, last = time.monotonic() + stall_seconds, None
    while True:
        if gateway.done():
            gateway.result()  # the gateway process died: say why
        await drain(services)
        state = await asyncio.to_thread(_delivery_state, services)
        found = await asyncio.to_thread(sinks.stats)
        done = (state[0] == services.dispatcher.relayed_total() and state[1] == 0
                and found["callbacks_sent"] + found["callbacks_failed"]
                >= found["provider_unique"] and found["callbacks_in_flight"] == 0
                and state[2] == state[3])
        if done:
            return
        if state != last:
            deadline, last = time.monotonic() + stall_seconds, state
        elif time.monotonic() > deadline:
            raise ReplayStalled(f"delivery made no progress for {stall_seconds:.0f} s: {state}")
        await asyncio.sleep(0.2)


def _delivery_state(services: Services) -> tuple[int, int, int, int]:
    """(ledger rows with an outcome, rows still sending, receipts published, receipts the
    receipts consumer has handled)."""
    with services.pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FILTER (WHERE state <> 'sending'),"
                    " count(*) FILTER (WHERE state = 'sending') FROM gateway_sends")
        finished, sending = cur.fetchone() or (0, 0)
        cur.execute("SELECT count(*) FROM gateway_receipts WHERE published_at IS NOT NULL")
        (published,) = cur.fetchone() or (0,)
        handled = sum(p + 1 for p in consumer_positions.all_positions(
            cur, services.settings.receipts_group).values())
    return int(finished), int(sending), int(published), int(handled)
