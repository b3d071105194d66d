"""Structured logs without personal data (§8): a small `drip demo --deliver` — the
services here, `drip follow` and the gateways in child processes — logs JSON lines only,
and none of them names a patient of the data set, a contact point or a message's text."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import stamina.instrumentation
import structlog

from domain.campaign import SendStep
from services import logs
from services.devtools import dataset
from services.devtools.demo import DEMO_CAMPAIGNS, load_definitions, run_demo
from services.settings import Settings
from tests.shared_data import CSV

ROWS = 500  # includes patients whose e-mail bounces: the gateway logs those


def no_progress(total: int) -> Callable[[int], None]:
    return lambda n: None


@pytest.fixture
def json_logs(settings: Settings) -> Iterator[Settings]:
    """Settings whose processes log JSON at debug; this process's logging is restored
    afterwards (it writes to the captured stderr, which closes with the test)."""
    root = logging.getLogger()
    saved = (structlog.get_config(), root.handlers[:], root.level,
             stamina.instrumentation.get_on_retry_hooks())
    chosen = settings.model_copy(update={"log_format": "json", "log_level": "debug"})
    logs.configure(chosen)
    yield chosen
    config, handlers, level, hooks = saved
    structlog.configure(**config)
    root.handlers[:], root.level = handlers, level
    stamina.instrumentation.set_on_retry_hooks(hooks)


def personal_data() -> dict[str, set[str]]:
    """What must never be logged: the patients' ids, their synthetic contact points, and
    the fixed text of every message template (its lines between the merge fields)."""
    ids, contacts = set(), set()
    for record in dataset.contacts(CSV, ROWS):
        data = json.loads(record.value)["data"]
        ids.add(data["patient_id"])
        for field in ("phone", "whatsapp", "email"):
            if data.get(field):
                contacts |= {data[field], data[field].lstrip("+")}
    texts = set()
    for definition in load_definitions(DEMO_CAMPAIGNS)[1]:
        for step in definition.steps:
            if isinstance(step, SendStep) and step.message is not None:
                for text in (step.message.body, step.message.subject or ""):
                    pieces = re.split(r"{{.*?}}|{%.*?%}|\n", text)
                    texts |= {p.strip(" .,:?!") for p in pieces if len(p.strip(" .,:?!")) >= 12}
    return {"patient id": ids, "contact point": contacts, "message text": texts}


def found_in(doc: dict[str, Any], secrets: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The secrets a log line (decoded) shows, as (kind, secret); a patient id only as a
    whole token (not digits that happen to sit inside a longer number)."""
    text = json.dumps(doc, ensure_ascii=False)
    found = [(kind, s) for kind, values in secrets.items() if kind != "patient id"
             for s in values if s in text]
    return found + [("patient id", p) for p in secrets["patient id"]
                    & set(re.findall(r"[\w.+-]+", text))]


def test_logs_are_json_lines_without_patients_contact_points_or_message_texts(
        json_logs: Settings, capfd: pytest.CaptureFixture[str]) -> None:  # §8
    result = run_demo(json_logs, CSV, ROWS, no_progress, deliver=True, failure_rate=0.3)
    assert result.delivered is not None and result.delivered.email_unique > 0
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    not_json = [line for line in lines if not _is_json_object(line)]
    assert not not_json, f"{len(not_json)} lines are not JSON, e.g. {not_json[:3]}"
    docs = [json.loads(line) for line in lines]
    # the gateways' child process logged too (the bounced e-mails), into the same capture
    assert any(doc["event"] == "delivery refused" for doc in docs)
    secrets = personal_data()
    planted = {"event": "x", "to": min(secrets["contact point"]),
               "patient": min(secrets["patient id"]), "body": min(secrets["message text"])}
    assert {kind for kind, _ in found_in(planted, secrets)} == set(secrets)  # the scan sees
    leaks = [(doc, found) for doc in docs if (found := found_in(doc, secrets))]
    assert not leaks, f"{len(leaks)} lines leak personal data, e.g. {leaks[:3]}"


def _is_json_object(line: str) -> bool:
    try:
        doc = json.loads(line)
    except ValueError:
        return False
    return isinstance(doc, dict) and {"event", "level", "timestamp"} <= set(doc)
