"""Where the tests' Kafka and PostgreSQL come from, in this order:
1. `DRIP_KAFKA_BOOTSTRAP` and `DRIP_DATABASE_URL`, when both are set (nothing starts);
2. containers started by testcontainers, when a Docker engine answers (a laptop with
   Docker, or CI with a Docker service);
3. otherwise `scripts/infra.sh up` (this project's machines have no Docker engine).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from services.devtools import infra

KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
POSTGRES_IMAGE = "postgres:15"


def docker_available() -> bool:
    """Whether a Docker engine answers a ping (False at once when there is none)."""
    try:
        import docker  # testcontainers' own dependency

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextlib.contextmanager
def containers() -> Iterator[infra.Endpoints]:
    """Kafka (KRaft) and PostgreSQL in containers, stopped on exit."""
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.postgres import PostgresContainer

    with KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka, \
            PostgresContainer(POSTGRES_IMAGE, driver=None) as postgres:
        yield infra.Endpoints(kafka.get_bootstrap_server(), postgres.get_connection_url())


@contextlib.contextmanager
def endpoints() -> Iterator[infra.Endpoints]:
    """The endpoints of a running Kafka and PostgreSQL, started if need be."""
    kafka = os.environ.get("DRIP_KAFKA_BOOTSTRAP", "").strip()
    database = os.environ.get("DRIP_DATABASE_URL", "").strip()
    if kafka and database:
        yield infra.Endpoints(kafka, database, infra.scram_from(dict(os.environ)))
    elif docker_available():
        with containers() as found:
            yield found
    else:
        yield infra.up()
