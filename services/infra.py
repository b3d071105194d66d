"""Start, stop and locate drip's development infrastructure (Kafka + PostgreSQL).

A thin wrapper over ``scripts/infra.sh``, used by the CLI and by the tests. The
script installs what is missing and runs both services on loopback only, with
their state in ``<repo>/.drip/``; it is idempotent, so calling :func:`up` when
everything already runs costs about a second.

The script's contract, relied on here: stdout carries only ``DRIP_...=`` lines,
every progress message goes to stderr. Those messages are passed through to the
caller's ``sys.stderr`` (so pytest and the CLI show them where they show their
own) and also kept, to be quoted in :class:`InfraError` when the script fails.

Typical use::

    from services.infra import endpoints_from_env_or_up

    ep = endpoints_from_env_or_up()
    ep.kafka_bootstrap  # "127.0.0.1:19092"
    ep.database_url     # "postgresql://drip:drip@127.0.0.1:54329/drip"
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The repository root: ``services/`` is a package directly below it."""

SCRIPT = REPO_ROOT / "scripts" / "infra.sh"
"""The script doing the real work."""

ENV_KAFKA = "DRIP_KAFKA_BOOTSTRAP"
ENV_DATABASE = "DRIP_DATABASE_URL"

UP_TIMEOUT_S = 1200.0
"""A first ``up`` may install packages with apt-get and resolve Kafka from Maven."""

OTHER_TIMEOUT_S = 180.0
"""``down`` waits up to 60 s per service; ``status`` is instant."""


class InfraError(RuntimeError):
    """``scripts/infra.sh`` failed or printed something unexpected.

    ``str(err)`` names the command and exit code and quotes the script's output.
    """

    def __init__(self, message: str, *, returncode: int | None = None, output: str = "") -> None:
        self.returncode = returncode
        self.output = output
        if output:
            message = f"{message}\n--- scripts/infra.sh output ---\n{output}"
        super().__init__(message)


@dataclass(frozen=True)
class Endpoints:
    """Where the services listen.

    ``kafka_bootstrap``: ``"host:port"``, e.g. ``"127.0.0.1:19092"``.
    ``database_url``: ``"postgresql://user:password@host:port/db"``,
    e.g. ``"postgresql://drip:drip@127.0.0.1:54329/drip"``.
    """

    kafka_bootstrap: str
    database_url: str


def _run(subcommand: str, timeout: float, *, echo: bool = True) -> tuple[int, str, str]:
    """Run ``bash scripts/infra.sh <subcommand>``; return ``(returncode, stdout, stderr)``.

    stderr is returned whole and, with ``echo``, also copied line by line to
    ``sys.stderr`` as it arrives. Raises :class:`InfraError` if the script cannot be run or
    exceeds ``timeout`` seconds (the process is then killed).
    """
    if not SCRIPT.is_file():
        raise InfraError(f"{SCRIPT} not found")
    try:
        proc = subprocess.Popen(
            ["bash", str(SCRIPT), subcommand],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
    except OSError as exc:  # e.g. no bash
        raise InfraError(f"cannot run {SCRIPT}: {exc}") from exc

    out_chunks: list[str] = []
    err_lines: list[str] = []

    def collect_stdout() -> None:
        assert proc.stdout is not None
        out_chunks.append(proc.stdout.read())

    def pump_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append(line)
            if not echo:
                continue
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):  # caller's stderr closed: keep collecting
                pass

    readers = [
        threading.Thread(target=collect_stdout, name=f"infra-{subcommand}-stdout", daemon=True),
        threading.Thread(target=pump_stderr, name=f"infra-{subcommand}-stderr", daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        for reader in readers:
            reader.join(timeout=5)
        raise InfraError(
            f"scripts/infra.sh {subcommand} did not finish within {timeout:.0f}s",
            output="".join(err_lines),
        ) from exc
    # The services the script starts redirect all their output to log files, so
    # the pipes close when the script exits; the timeout is only a safety net.
    for reader in readers:
        reader.join(timeout=10)
    out = "".join(out_chunks)
    return proc.returncode, out, "".join(err_lines)


def _failed(subcommand: str, code: int, out: str, err: str, why: str = "") -> InfraError:
    """The error for a failed run, quoting everything the script printed."""
    why = why or f"failed (exit {code})"
    return InfraError(f"scripts/infra.sh {subcommand} {why}", returncode=code, output=err + out)


def _parse_env_lines(stdout: str) -> dict[str, str]:
    """``"K=V\\nK2=V2\\n"`` -> ``{"K": "V", "K2": "V2"}`` for ``DRIP_`` lines only."""
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("DRIP_"):
            found[key] = value
    return found


def up(timeout: float = UP_TIMEOUT_S) -> Endpoints:
    """Install if needed, start if needed, wait until both services answer.

    Returns the :class:`Endpoints` the script printed. Raises :class:`InfraError`
    (with the script's output) on a non-zero exit or missing ``DRIP_`` lines.
    """
    code, out, err = _run("up", timeout)
    if code != 0:
        raise _failed("up", code, out, err)
    env = _parse_env_lines(out)
    missing = [k for k in (ENV_KAFKA, ENV_DATABASE) if not env.get(k)]
    if missing:
        raise _failed("up", code, out, err, why=f"printed no {', '.join(missing)}")
    return Endpoints(kafka_bootstrap=env[ENV_KAFKA], database_url=env[ENV_DATABASE])


def down(timeout: float = OTHER_TIMEOUT_S) -> None:
    """Stop the services this clone started (idempotent). Raises :class:`InfraError` on failure."""
    code, out, err = _run("down", timeout)
    if code != 0:
        raise _failed("down", code, out, err)


def status(timeout: float = OTHER_TIMEOUT_S) -> str:
    """A human-readable report, one line per service, e.g.::

        [infra] kafka: running (pid 4906, this clone) at 127.0.0.1:19092, data in /repo/.drip/kafka
        [infra] postgres: not running (would listen on 127.0.0.1:54329)

    Services being down is not an error (the script exits 3 then); any other
    failure raises :class:`InfraError`.
    """
    code, out, err = _run("status", timeout, echo=False)
    if code not in (0, 3):
        raise _failed("status", code, out, err)
    return err + out


def endpoints_from_env_or_up() -> Endpoints:
    """Endpoints from ``DRIP_KAFKA_BOOTSTRAP`` and ``DRIP_DATABASE_URL`` when both
    are set (nothing is started: the caller manages its own infrastructure, e.g.
    docker compose or CI); otherwise :func:`up`."""
    kafka = os.environ.get(ENV_KAFKA, "").strip()
    database = os.environ.get(ENV_DATABASE, "").strip()
    if kafka and database:
        return Endpoints(kafka_bootstrap=kafka, database_url=database)
    return up()
