"""Where the tests' Kafka and PostgreSQL come from, in this order:
1. `DRIP_KAFKA_BOOTSTRAP` and `DRIP_DATABASE_URL`, when both are set (nothing starts);
2. containers started by testcontainers, when a Docker engine answers (a laptop with
   Docker, or CI with a Docker service), stopped at the end of the session;
3. otherwise `scripts/infra.sh up` (this project's machines have no Docker engine).
1 and 3 are `infra.endpoints_from_env_or_up()`, unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from services.devtools import infra

# testcontainers' KafkaContainer drives the Confluent image's own start scripts, so it
# takes cp-kafka (KRaft from 7.0), not apache/kafka; 7.6 is Kafka 3.6.
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
POSTGRES_IMAGE = "postgres:15"
KAFKA_START_TIMEOUT_S = 120  # after the image pull; testcontainers' default is 30
PING_TIMEOUT_S = 2

# Like scripts/infra.sh's single node: drip creates its topics itself, nothing appears
# by accident, and every internal topic lives on the one broker.
KAFKA_SETTINGS = {
    "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    "KAFKA_MIN_INSYNC_REPLICAS": "1",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
}


def _from_env() -> bool:
    return bool(os.environ.get("DRIP_KAFKA_BOOTSTRAP", "").strip()
                and os.environ.get("DRIP_DATABASE_URL", "").strip())


def docker_available(timeout: float = PING_TIMEOUT_S) -> bool:
    """Whether the Docker engine testcontainers would use answers a ping. False at once
    when there is no engine (no socket: the connection is refused, nothing to wait for)."""
    try:
        import docker  # testcontainers' own dependency
        from testcontainers.core.docker_client import get_docker_host

        # tc.host (~/.testcontainers.properties), DOCKER_HOST or the current docker
        # context, in testcontainers' order; None: docker-py's default socket
        host = get_docker_host()
        client = docker.from_env(
            environment={**os.environ, "DOCKER_HOST": host} if host else None,
            timeout=timeout, use_ssh_client=bool(host and host.startswith("ssh://")))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextlib.contextmanager
def containers() -> Iterator[infra.Endpoints]:
    """Kafka (KRaft, one node) and PostgreSQL in containers, removed on exit. The
    database user is the container's superuser: the tests create a database each."""
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.postgres import PostgresContainer

    with contextlib.ExitStack() as stack:
        kafka = KafkaContainer(KAFKA_IMAGE).with_kraft()
        for name, value in KAFKA_SETTINGS.items():
            kafka.with_env(name, value)
        stack.callback(kafka.stop)  # registered first: also removes a half-started one
        kafka.start(timeout=KAFKA_START_TIMEOUT_S)
        # explicit credentials: a POSTGRES_USER/PASSWORD/DB in our environment is
        # someone else's; driver=None: a plain postgresql:// URL, as psycopg wants
        postgres = stack.enter_context(PostgresContainer(
            POSTGRES_IMAGE, username="drip", password="drip", dbname="drip", driver=None))
        yield infra.Endpoints(kafka.get_bootstrap_server(), postgres.get_connection_url())


@contextlib.contextmanager
def endpoints() -> Iterator[infra.Endpoints]:
    """The endpoints of a running Kafka and PostgreSQL, started if need be: containers
    when Docker answers and the environment names none, else as `drip infra` finds them."""
    if not _from_env() and docker_available():
        with containers() as found:
            yield found
    else:
        yield infra.endpoints_from_env_or_up()
