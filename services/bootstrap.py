"""The composition root: settings in, wired services out. Nothing connects at import.

It alone turns settings into eventsourcing's environment and Kafka clients (STYLE §6),
and owns every PostgreSQL connection drip opens itself: one `psycopg_pool` pool handed to
the timer, the relays, the projector, the replay driver, the report and the reset
(eventsourcing keeps its own pool for the event store).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import stamina
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from psycopg_pool import ConnectionPool

from contracts.topics import Topics
from projections import dead_letters, gateway_sends, timers
from services.adapters.clock import Clock, WallClock
from services.adapters.kafka_admin import TopicSpec
from services.adapters.kafka_security import client_options, security
from services.adapters.log_listener import LogListener
from services.adapters.log_throttle import throttle_client_logs
from services.adapters.publisher import BulkPublisher
from services.application.app import DripApplication
from services.entrypoints import asyncapi, subscribers
from services.entrypoints import gateway as gateway_entry
from services.entrypoints.gateway import Gateway
from services.entrypoints.projector import Projector
from services.entrypoints.relays import DeadLetterRelay, Dispatcher, ReceiptRelay
from services.entrypoints.timer import TimerService
from services.settings import Settings


@dataclass
class Services:
    """Everything one drip process runs."""

    settings: Settings
    topics: Topics
    pool: ConnectionPool
    app: DripApplication
    broker: KafkaBroker
    publisher: BulkPublisher
    timer: TimerService
    dispatcher: Dispatcher
    dead_letter_relay: DeadLetterRelay
    receipt_relay: ReceiptRelay
    projector: Projector
    breaker: subscribers.Breaker

    def close(self) -> None:
        """Close the connection pools (Kafka clients are stopped by the runtime)."""
        self.pool.close()
        self.app.close()


def eventsourcing_env(settings: Settings) -> dict[str, str]:
    """eventsourcing's own environment, derived from `settings.database_url`."""
    url = urlparse(settings.database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "APPLICATION_RECORDER_TOPIC": "services.adapters.recorder:DripRecorder",
        "POSTGRES_DBNAME": url.path.lstrip("/"),
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or ""),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_POOL_SIZE": "6",
        "POSTGRES_LOCK_TIMEOUT": "30",
        "CREATE_TABLE": "true",
    }


DEAD_LETTER_MAX_BYTES = 4 << 20
"""The dead-letter topic takes larger records than the upstream topics (the broker's 1 MiB
default), so a refused record near that limit still fits with drip's headers added."""


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of the deployment, with its partitions and settings (issue 6 §8)."""
    topics = Topics(settings.topic_prefix)
    common = dict(partitions=settings.partitions,
                  replication_factor=settings.replication_factor)
    return [TopicSpec(name, **common) for name in topics.all if name != topics.dead_letters] + [
        TopicSpec(topics.dead_letters, **common,
                  configs={"max.message.bytes": str(DEAD_LETTER_MAX_BYTES)})]


def build_pool(settings: Settings) -> ConnectionPool:
    """drip's own connections (read models, timers, relay positions), opened now."""
    return ConnectionPool(settings.database_url, min_size=1, max_size=8, open=True,
                          name="drip")


def build_application(settings: Settings) -> DripApplication:
    """The event-sourced application on PostgreSQL; creates missing tables and reads the
    campaign catalogue."""
    app = DripApplication(env=eventsourcing_env(settings))
    app.campaigns.refresh()
    return app


def build_broker(settings: Settings) -> KafkaBroker:
    """A Kafka broker whose producer waits for all replicas and is idempotent (NOTES);
    on stop it lets in-flight batches finish for up to `graceful_seconds`."""
    logging.getLogger("drip.faststream").setLevel(logging.WARNING)
    return KafkaBroker(settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                       graceful_timeout=settings.graceful_seconds, security=security(settings),
                       logger=logging.getLogger("drip.faststream"))


def build(settings: Settings | None = None, clock: Clock | None = None) -> Services:
    settings = settings or Settings()
    stamina.instrumentation.set_on_retry_hooks([])  # drip logs its retries, throttled
    throttle_client_logs()  # an outage must not write thousands of identical lines
    topics = Topics(settings.topic_prefix)
    app = build_application(settings)
    pool = build_pool(settings)
    broker = build_broker(settings)
    breaker = subscribers.Breaker()
    subscribers.register(broker, settings, lambda: app, breaker, clock)
    publisher = BulkPublisher(settings.kafka_bootstrap, max_request_size=DEAD_LETTER_MAX_BYTES,
                              options=client_options(settings))
    events = LogListener(settings.database_url, app.recorder.channel_name)  # type: ignore[attr-defined]
    idle = settings.idle_seconds
    return Services(
        settings, topics, pool, app, broker, publisher,
        timer=TimerService(clock or WallClock(), pool, publisher, topics.step_due,
                           LogListener(settings.database_url, timers.CHANNEL),
                           page=settings.timer_batch, idle_seconds=idle),
        dispatcher=Dispatcher(app, pool, publisher, topics.dispatch, events, idle_seconds=idle),
        dead_letter_relay=DeadLetterRelay(
            pool, publisher, topics.dead_letters,
            LogListener(settings.database_url, dead_letters.CHANNEL), idle_seconds=idle),
        receipt_relay=ReceiptRelay(
            pool, publisher, topics.receipts,
            LogListener(settings.database_url, gateway_sends.CHANNEL), idle_seconds=idle),
        projector=Projector(app, pool, LogListener(settings.database_url,
                                                   app.recorder.channel_name),  # type: ignore[attr-defined]
                            idle_seconds=idle),
        breaker=breaker)


def asyncapi_document(settings: Settings) -> AsyncAPI:
    """The AsyncAPI document of the broker `build` wires (§9); connects to nothing."""
    broker = build_broker(settings)

    def no_application() -> DripApplication:
        raise RuntimeError("the AsyncAPI document's broker is never started")

    subscribers.register(broker, settings, no_application, subscribers.Breaker())
    return asyncapi.document(broker, Topics(settings.topic_prefix))


@dataclass
class GatewayProcess:
    """What `drip gateway CHANNEL…` runs: its own broker (one consumer group per channel
    set), the gateway, and the pools it reads and writes through."""

    settings: Settings
    app: DripApplication
    pool: ConnectionPool
    broker: KafkaBroker
    gateway: Gateway

    def close(self) -> None:
        self.pool.close()
        self.app.close()


def build_gateway(settings: Settings, channels: Sequence[str]) -> GatewayProcess:
    """A gateway for `channels` (`email`, `sms`, `whatsapp`). Raises `ValueError` for a
    channel without an adapter."""
    app = build_application(settings)
    pool = build_pool(settings)
    broker = build_broker(settings)
    gateway = Gateway(settings, app, pool, gateway_entry.adapters_for(settings, channels))
    gateway_entry.register(broker, settings, gateway)
    return GatewayProcess(settings, app, pool, broker, gateway)
