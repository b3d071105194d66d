"""Real infrastructure for the tests: Kafka and PostgreSQL (from DRIP_KAFKA_BOOTSTRAP /
DRIP_DATABASE_URL, testcontainers when Docker is there, else scripts/infra.sh; see
tests/infrastructure.py), a fresh database and fresh topic names per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest

from services.devtools import infra
from services.settings import Settings
from tests import infrastructure


@pytest.fixture(scope="session")
def endpoints() -> Iterator[infra.Endpoints]:
    with infrastructure.endpoints() as found:
        yield found


def _with_db(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


@pytest.fixture
def database_url(endpoints: infra.Endpoints) -> Iterator[str]:
    """A new, empty database for one test, dropped afterwards."""
    name = f"drip_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(endpoints.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield _with_db(endpoints.database_url, name)
    with psycopg.connect(endpoints.database_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(endpoints: infra.Endpoints, database_url: str) -> Settings:
    """Settings with this test's own database, topics and consumer groups."""
    run = uuid.uuid4().hex[:10]
    return Settings(kafka_bootstrap=endpoints.kafka_bootstrap, database_url=database_url,
                    topic_prefix=f"test-{run}", consumer_prefix=f"test-{run}",
                    replay_chunk=1000)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fault suite restarts the shared broker and database: it runs last."""
    items.sort(key=lambda item: "tests/faults/" in str(item.path).replace("\\", "/"))
