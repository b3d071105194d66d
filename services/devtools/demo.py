"""`drip backtest` and `drip demo`: campaign files run over recorded history (the 110,527
real appointments) on real Kafka and PostgreSQL, through the real services, with a
simulated clock, from empty state (issue 2 §4, issue 7 backtest). The demo is the
backtest of the two demo campaigns (campaigns/appointment-reminders.yaml and
campaigns/no-show-recovery.yaml) for the demo clinic (campaigns/clinics/vitoria.yaml)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from domain.campaign import CampaignDefinition
from domain.clinic import ClinicSettings
from projections import schema
from services.adapters import kafka_admin
from services.adapters.clock import SimulatedClock
from services.adapters.kafka_security import client_options
from services.application.definitions import load_campaign, load_clinic
from services.bootstrap import Services, build, build_pool, topic_specs
from services.devtools import dataset
from services.devtools.replay import Replay, ReplayStats
from services.runtime import drain, running
from services.settings import Settings


@dataclass
class DemoResult:
    replay: ReplayStats
    wall_seconds: float
    domain_events: int
    dispatched: int


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
             ) -> DemoResult:
    """Reset, apply the clinic and activate the campaigns (drafts included: a backtest
    shows what a draft would do), replay the file through the services, drain.

    `progress(total)` returns the callback the replay calls with each chunk's size.
    Raises `DefinitionError` before touching anything when a file is invalid.
    """
    started = time.monotonic()
    clinic_settings, definitions = load_definitions(campaigns, clinic)
    reset(settings)
    timeline = dataset.timeline(csv, limit)
    clock = SimulatedClock(timeline[0].time if timeline else datetime.now(UTC))
    services = build(settings, clock)
    try:
        define_campaigns(services, clinic_settings, definitions)

        async def body() -> ReplayStats:
            async with running(services, followers="process"):
                replay = Replay(services, clock, settings.replay_chunk)
                stats = await replay.run(timeline, progress(len(timeline)))
                await drain(services)
                return stats

        stats = asyncio.run(body())
        events = services.app.recorder.max_notification_id() or 0
        return DemoResult(stats, time.monotonic() - started, events,
                          services.dispatcher.relayed_total())
    finally:
        services.close()
