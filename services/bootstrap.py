"""The composition root: settings in, wired services out. Nothing connects at import."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from faststream.kafka import KafkaBroker

from contracts.topics import Topics
from services import consumers
from services.application import DripApplication
from services.clock import Clock, WallClock
from services.followers import Dispatcher, Projector
from services.publisher import BulkPublisher
from services.settings import Settings
from services.timer import TimerService


@dataclass
class Services:
    """Everything one drip process runs."""

    settings: Settings
    topics: Topics
    app: DripApplication
    broker: KafkaBroker
    publisher: BulkPublisher
    timer: TimerService
    dispatcher: Dispatcher
    projector: Projector


def build_application(settings: Settings) -> DripApplication:
    """The event-sourced application on PostgreSQL; creates missing tables."""
    app = DripApplication(env=settings.eventsourcing_env())
    app.load_campaigns()
    return app


def build_broker(settings: Settings) -> KafkaBroker:
    """A Kafka broker whose producer waits for all replicas and is idempotent (NOTES)."""
    logging.getLogger("drip.faststream").setLevel(logging.WARNING)
    return KafkaBroker(settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                       logger=logging.getLogger("drip.faststream"))


def build(settings: Settings | None = None, clock: Clock | None = None) -> Services:
    settings = settings or Settings()
    topics = Topics(settings.topic_prefix)
    app = build_application(settings)
    broker = build_broker(settings)
    consumers.register(broker, app, settings)
    publisher = BulkPublisher(settings.kafka_bootstrap)
    timer = TimerService(settings.database_url, publisher, topics.step_due, clock or WallClock(),
                         batch=settings.timer_batch, idle_seconds=settings.poll_seconds)
    dispatcher = Dispatcher(app, publisher, topics.dispatch, settings.database_url)
    projector = Projector(app, settings.database_url)
    return Services(settings, topics, app, broker, publisher, timer, dispatcher, projector)
