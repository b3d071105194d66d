"""The fault suite in CI (issue 6): a few rounds of every fault kind against `drip serve`
processes; `DRIP_FAULT_ROUNDS=200` (or `python -m tests.faults.run --rounds 200`) for more,
`DRIP_FAULT_SEED` to replay a run."""

from __future__ import annotations

import os

from services.devtools import infra
from services.settings import Settings
from tests.faults.cluster import FAULT_KINDS
from tests.faults.run import run
from tests.faults.workload import POISON_KINDS

ROUNDS = int(os.environ.get("DRIP_FAULT_ROUNDS", "4"))
SEED = int(os.environ.get("DRIP_FAULT_SEED", "20261204"))


def test_no_fault_loses_or_duplicates_anything(endpoints: infra.Endpoints) -> None:
    # broker and database restarts go through scripts/infra.sh: only on the local stack
    local_stack = endpoints.kafka_scram is not None
    faults = FAULT_KINDS if local_stack else ("kill9", "rebalance")
    base = Settings(kafka_bootstrap=endpoints.kafka_bootstrap,
                    database_url=endpoints.database_url)
    report = run(base, ROUNDS, SEED, faults, POISON_KINDS)
    print("\n".join(report.lines()))
    assert report.findings is not None
    assert report.rounds == ROUNDS and set(report.faults) == set(faults[:ROUNDS])
    assert report.findings.violations == [], f"seed {SEED}: {report.findings.violations}"
    assert report.findings.lost == 0 and report.findings.duplicated == 0
    assert report.findings.sends > 0 and report.poison > 0
