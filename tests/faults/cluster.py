"""The system under test: `drip serve` as separate OS processes, and the faults the suite
injects into it (kill -9, a second instance joining then one dying, broker and database
restarts through scripts/infra.sh)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.devtools import infra
from services.settings import Settings

FAULT_KINDS = ("kill9", "rebalance", "kafka_restart", "postgres_restart")
Process = subprocess.Popen[bytes]


@dataclass
class Cluster:
    """The `drip serve` processes of one run, their logs under `log_dir`."""

    settings: Settings
    log_dir: Path
    processes: list[Process] = field(default_factory=list)
    started: int = 0

    def start(self) -> Process:
        self.started += 1
        log = (self.log_dir / f"serve-{self.started}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"],
            env={**os.environ, **self.settings.as_env()}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def kill9(self, process: Process) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.processes.remove(process)

    def dead(self) -> list[Process]:
        """Processes that exited although nobody stopped them (half-alive is worse)."""
        return [p for p in self.processes if p.poll() is not None]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()

    def inject(self, kind: str, choose: Callable[[list[Process]], Process]) -> None:
        """Inject one fault of `kind` (`choose`: the run's seeded `random.choice`); the
        cluster keeps at least one process."""
        if kind == "kill9":
            self.kill9(choose(self.processes))
            self.start()
        elif kind == "rebalance":
            self.start()  # joins the consumer groups: partitions move
            time.sleep(2)
            self.kill9(choose(self.processes))
        elif kind == "kafka_restart":
            infra.run("restart", "kafka")
        elif kind == "postgres_restart":
            infra.run("restart", "postgres")
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
