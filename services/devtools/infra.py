"""The local development stack (Kafka + PostgreSQL on loopback), through `scripts/infra.sh`.

A devtool: `drip demo`, `drip infra` and the tests use it; `drip serve`, `report` and
`follow` never do (a deployment brings its own Kafka and PostgreSQL, e.g. the Docker
image, which has no `scripts/`). The script is idempotent and prints only `DRIP_*=...`
lines on stdout; its progress goes to stderr, passed through to ours.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "infra.sh"
UP_TIMEOUT_S = 1200  # a first `up` may install PostgreSQL with apt and resolve Kafka from Maven


class InfraError(RuntimeError):
    """`scripts/infra.sh` is missing, failed, or printed no endpoints."""


@dataclass(frozen=True)
class Endpoints:
    """`kafka_bootstrap` ("127.0.0.1:19092") and `database_url` ("postgresql://..."); the
    local stack also has a SCRAM-SHA-256 listener (`kafka_scram`: bootstrap, user, password)."""

    kafka_bootstrap: str
    database_url: str
    kafka_scram: tuple[str, str, str] | None = None


def scram_from(found: dict[str, str]) -> tuple[str, str, str] | None:
    """The SCRAM listener named by `DRIP_LOCAL_KAFKA_SCRAM_*` entries, if all three are."""
    names = ("DRIP_LOCAL_KAFKA_SCRAM_BOOTSTRAP", "DRIP_LOCAL_KAFKA_SCRAM_USERNAME",
             "DRIP_LOCAL_KAFKA_SCRAM_PASSWORD")
    values = tuple(found.get(n, "").strip() for n in names)
    return values if all(values) else None  # type: ignore[return-value]


def run(*arguments: str, timeout: float = UP_TIMEOUT_S) -> str:
    """`bash scripts/infra.sh ARGUMENTS...` (`up`, `restart kafka`...); returns its stdout.
    Raises `InfraError`."""
    if not SCRIPT.is_file():
        raise InfraError(f"{SCRIPT} not found: point DRIP_KAFKA_BOOTSTRAP and "
                         "DRIP_DATABASE_URL at a running Kafka and PostgreSQL instead")
    done = subprocess.run(["bash", str(SCRIPT), *arguments], stdout=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True, timeout=timeout, check=False)
    if done.returncode not in (0, 3):  # 3: `status` found a service down
        raise InfraError(f"scripts/infra.sh {' '.join(arguments)} failed (exit {done.returncode})")
    return done.stdout


def up() -> Endpoints:
    """Install what is missing, start what is not running, return the endpoints."""
    found = dict(line.split("=", 1) for line in run("up").splitlines() if "=" in line)
    try:
        return Endpoints(found["DRIP_KAFKA_BOOTSTRAP"], found["DRIP_DATABASE_URL"],
                         scram_from(found))
    except KeyError as missing:
        raise InfraError(f"scripts/infra.sh up printed no {missing}") from None


def endpoints_from_env_or_up() -> Endpoints:
    """`DRIP_KAFKA_BOOTSTRAP` and `DRIP_DATABASE_URL` when both are set (nothing is
    started); otherwise the local stack, started by `up()`."""
    kafka = os.environ.get("DRIP_KAFKA_BOOTSTRAP", "").strip()
    database = os.environ.get("DRIP_DATABASE_URL", "").strip()
    if kafka and database:
        return Endpoints(kafka, database, scram_from(dict(os.environ)))
    return up()
