"""docs/read-models.md is true (issue 9, §7): every SQL example in it runs against the read
models of a real run (the first 1,500 rows of the data set through Kafka and PostgreSQL),
and the views agree with the report and with each other."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from services.bootstrap import build_pool
from services.devtools.demo import DEMO_CAMPAIGNS, run_demo
from services.settings import Settings
from tests.gallery import GALLERY
from tests.reading import report as read_report
from tests.shared_data import CSV

DOC = Path(__file__).resolve().parents[2] / "docs" / "read-models.md"
ROWS = 1500


@pytest.fixture(scope="module")
def examples() -> list[str]:
    found = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(found) >= 7
    return found


def test_every_example_runs_and_the_views_agree(settings: Settings,
                                                examples: list[str]) -> None:
    run_demo(settings, CSV, ROWS, lambda total: lambda n: None,
             campaigns=[*DEMO_CAMPAIGNS, GALLERY / "re-engagement.yaml"])
    report = read_report(settings)
    with build_pool(settings) as pool, pool.connection() as conn, conn.cursor() as cur:
        answers: list[list[tuple[Any, ...]]] = []
        for sql in examples:
            cur.execute(sql)  # type: ignore[arg-type]
            answers.append(cur.fetchall())
        best, rebooked, funnel, skips, _due, timeline, _roi = answers[:7]
        assert best and skips and funnel and timeline
        assert rebooked[0][0] > 0

        # step_funnel agrees with the report, step by step
        sent: dict[tuple[str, str], int] = {}
        for r in funnel:  # one row per variant and channel
            sent[(r[0], r[1])] = sent.get((r[0], r[1]), 0) + r[4]
        for campaign, c in report["campaigns"].items():
            for step, counts in c["steps"].items():
                assert sent.get((campaign, step), 0) == counts["sent"], (campaign, step)

        cur.execute("SELECT campaign, enrolled, completed, stopped FROM campaign_summary"
                    " WHERE clinic_id = 'vitoria'")
        for campaign, enrolled, completed, stopped in cur.fetchall():
            c = report["campaigns"][campaign]
            assert (enrolled, completed, stopped) == (
                c["enrolled"], c["completed"], sum(c["stopped"].values()))

        # a patient's timeline holds exactly their enrollments' events
        cur.execute("SELECT count(*) FROM patient_timeline WHERE clinic_id = 'vitoria'"
                    " AND patient_id = '29872499824296'")
        (events,) = cur.fetchone() or (0,)
        cur.execute("SELECT count(*) FROM drip_events e JOIN enrollments n"
                    " ON n.enrollment_id = e.originator_id WHERE n.patient_id = '29872499824296'")
        assert cur.fetchone() == (events,) and events > 0
