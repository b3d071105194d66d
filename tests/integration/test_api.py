"""The HTTP API on the real PostgreSQL (issue 9, §1, §3, §7): a campaign created, activated
and enrolled into over HTTP, its history and state at a past time; keys per clinic and
role (another clinic's key and ids get 404 or 403 on every endpoint, never data); 422
naming the field, 404, 409; the funnel and attribution after real sends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import yaml
from fastapi.testclient import TestClient

from projections import api_keys
from services.bootstrap import Services, build
from services.entrypoints.api import create_api
from services.settings import Settings
from tests.e2e.oracle import expected_report
from tests.gallery import CLINIC, GALLERY
from tests.timers import fire_due

WELCOME: dict[str, Any] = {
    "clinic": "vitoria", "name": "api-welcome", "kind": "follow_up",
    "description": "Welcome and a nudge", "trigger": "appointment.booked",
    "subject": "patient", "stop_on": ["opted_out", "responded"],
    "steps": [
        {"wait": {"minutes": 1}},
        {"send": "welcome", "channel": "sms", "body": "Olá {{ patient.first_name }}!"},
        {"wait": {"days": 2}},
        {"send": "nudge", "channel": "email", "subject": "Tudo bem?",
         "body": "Agende: {{ clinic.booking_url }}"},
    ],
}


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = build(settings)
    built.app.apply_clinic(CLINIC)
    built.app.apply_clinic(replace(CLINIC, clinic_id="aurora", name="Clínica Aurora"))
    yield built
    built.close()


def key(services: Services, clinic: str, role: str) -> dict[str, str]:
    with services.pool.connection() as conn, conn.cursor() as cur:
        return {"X-API-Key": api_keys.create(cur, clinic, role, datetime.now(UTC))}


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_api(services.settings, services.app, services.pool)) as c:
        yield c


def test_a_campaign_over_http_from_draft_to_an_enrollment_and_its_history(
        services: Services, client: TestClient) -> None:
    admin = key(services, "vitoria", "admin")
    made = client.post("/v1/campaigns", json=WELCOME, headers=admin)
    assert made.status_code == 201, made.text
    cid = made.json()["campaign_id"]
    assert made.json()["status"] == "draft"
    again = client.post("/v1/campaigns", json=WELCOME, headers=admin)
    assert (again.status_code, again.json()["outcome"]) == (200, "unchanged")
    enroll = {"campaign_id": cid, "patient_id": "p1"}
    refused = client.post("/v1/enrollments", json=enroll, headers=admin)
    assert refused.status_code == 409 and "not active" in refused.json()["detail"]
    assert client.post(f"/v1/campaigns/{cid}/activate", headers=admin).json()["status"] == "active"

    first = client.post("/v1/enrollments", json=enroll, headers=admin)
    assert first.status_code == 201, first.text
    second = client.post("/v1/enrollments", json=enroll, headers=admin)
    assert second.status_code == 200
    eid = first.json()["enrollment_id"]
    assert second.json()["enrollment_id"] == eid and second.json()["created"] is False
    assert first.json()["progress"] == "0/2 (0 %)"
    assert first.json()["next_step"] == "welcome"

    enrolled_at = datetime.fromisoformat(first.json()["started_at"])
    assert len(fire_due(services, enrolled_at + timedelta(minutes=2))) == 1  # the welcome SMS
    one = client.get(f"/v1/enrollments/{eid}", headers=admin).json()
    assert one["progress"] == "1/2 (50 %)" and one["sent_steps"] == ["welcome"]
    assert [e["event"] for e in one["history"]] == ["Enrolled", "StepScheduled",
                                                    "MessageSent", "StepScheduled"]
    half_way = (enrolled_at + timedelta(seconds=30)).isoformat()
    past = client.get(f"/v1/enrollments/{eid}", params={"at": half_way},
                      headers=admin).json()
    assert [e["event"] for e in past["history"]] == ["Enrolled", "StepScheduled"]
    assert past["progress"] == "0/2 (0 %)" and past["next_step"] == "welcome"
    earlier = (enrolled_at - timedelta(seconds=1)).isoformat()
    assert client.get(f"/v1/enrollments/{eid}", params={"at": earlier},
                      headers=admin).json()["status"] == "not_started"

    services.projector.catch_up()
    listed = client.get("/v1/enrollments", params={"campaign_id": cid}, headers=admin).json()
    assert [i["enrollment_id"] for i in listed["items"]] == [eid]
    assert listed["items"][0]["progress"] == "1/2 (50 %)"
    seq = client.get("/v1/patients/p1/enrollments", headers=admin).json()
    assert seq[0]["next_step"] == "nudge" and seq[0]["next_due_local"].endswith("-03:00")
    timeline = client.get("/v1/patients/p1/timeline", headers=admin).json()
    assert [e["event"] for e in timeline][:3] == ["Enrolled", "StepScheduled", "MessageSent"]
    funnel = client.get("/v1/stats/funnel", headers=admin).json()
    assert [(f["step"], f["channel"], f["sent"]) for f in funnel] == [("welcome", "sms", 1)]
    csv = client.get("/v1/stats/funnel", params={"format": "csv"}, headers=admin)
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0].startswith("campaign_id,campaign,step,variant,channel,sent")

    stopped = client.delete(f"/v1/enrollments/{eid}", headers=admin).json()
    assert stopped["stopped"] is True
    assert client.delete(f"/v1/enrollments/{eid}", headers=admin).json()["stopped"] is False
    final = client.get(f"/v1/enrollments/{eid}", headers=admin).json()
    assert (final["status"], final["stop_reason"]) == ("stopped", "manual")


def test_a_new_version_and_the_lifecycle_over_http(services: Services,
                                                   client: TestClient) -> None:
    admin = key(services, "vitoria", "admin")
    cid = client.post("/v1/campaigns", json=WELCOME, headers=admin).json()["campaign_id"]
    changed = {**WELCOME, "description": "Welcome, v2"}
    diff = client.post(f"/v1/campaigns/{cid}/diff", json=changed, headers=admin).json()
    assert diff["changed"] and any(line.startswith("+description") for line in diff["diff"])
    revised = client.post("/v1/campaigns", json=changed, headers=admin)
    assert (revised.status_code, revised.json()["latest_version"]) == (200, 2)
    v1 = client.get(f"/v1/campaigns/{cid}", params={"version": 1}, headers=admin).json()
    assert v1["definition"]["description"] == "Welcome and a nudge"
    assert client.get(f"/v1/campaigns/{cid}", params={"version": 9},
                      headers=admin).status_code == 404
    for action, status in (("activate", "active"), ("pause", "paused"),
                           ("resume", "active"), ("archive", "archived")):
        answer = client.post(f"/v1/campaigns/{cid}/{action}", headers=admin)
        assert answer.json()["status"] == status, answer.text
    assert client.post(f"/v1/campaigns/{cid}/activate", headers=admin).status_code == 409
    listed = client.get("/v1/campaigns", params={"status": "archived"}, headers=admin).json()
    assert [c["name"] for c in listed] == ["api-welcome"]
    preview = client.post(f"/v1/campaigns/{cid}/preview", json={"patient_id": "p9"},
                          headers=admin).json()
    assert any("send welcome (sms)" in line for line in preview.get("lines", [preview])), preview
    gallery = client.get("/v1/gallery", headers=admin).json()
    assert "appointment-reminders" in {g["name"] for g in gallery}


def test_invalid_requests_name_the_field(services: Services, client: TestClient) -> None:
    admin = key(services, "vitoria", "admin")
    bad = {**WELCOME, "steps": [{"send": "x", "channel": "pigeon", "body": "hi"}]}
    answer = client.post("/v1/campaigns", json=bad, headers=admin)
    assert answer.status_code == 422
    assert any("channel" in [str(p) for p in d["loc"]] for d in answer.json()["detail"])
    unknown_field = {**WELCOME, "steps": [{"send": "x", "channel": "sms",
                                           "body": "{{ patient.shoe_size }}"}]}
    answer = client.post("/v1/campaigns", json=unknown_field, headers=admin)
    assert answer.status_code == 422 and "shoe_size" in answer.text
    other = client.post("/v1/campaigns", json={**WELCOME, "clinic": "aurora"}, headers=admin)
    assert other.status_code == 422 and "clinic" in other.text
    assert client.get("/v1/enrollments", params={"limit": 0}, headers=admin).status_code == 422
    assert client.get("/v1/campaigns/not-a-uuid", headers=admin).status_code == 422
    assert client.get(f"/v1/campaigns/{'0' * 8}-0000-0000-0000-{'0' * 12}",
                      headers=admin).status_code == 404


def test_another_clinics_key_gets_404_or_403_on_every_endpoint_never_data(
        services: Services, client: TestClient) -> None:
    """§1 tenancy: with clinic aurora's keys and clinic vitoria's ids, every route of the
    OpenAPI document answers 401, 403, 404 or 422, and no answer contains vitoria's data."""
    mine = key(services, "vitoria", "admin")
    cid = client.post("/v1/campaigns", json=WELCOME, headers=mine).json()["campaign_id"]
    client.post(f"/v1/campaigns/{cid}/activate", headers=mine)
    eid = client.post("/v1/enrollments", json={"campaign_id": cid, "patient_id": "p1"},
                      headers=mine).json()["enrollment_id"]
    fire_due(services, datetime.now(UTC) + timedelta(minutes=2))
    services.projector.catch_up()
    job = client.post("/v1/enrollments/bulk", data={"campaign_id": cid}, headers=mine,
                      files={"file": ("p.csv", b"patient_id\np7\n", "text/csv")}).json()
    poll(client, job["job_id"], mine)
    values = {"campaign_id": cid, "enrollment_id": eid, "patient_id": "p1",
              "action": "pause", "job_id": job["job_id"]}
    bodies: dict[str, Any] = {
        "/v1/campaigns": WELCOME, "/v1/campaigns/{campaign_id}/diff": WELCOME,
        "/v1/campaigns/{campaign_id}/preview": {"patient_id": "p1"},
        "/v1/enrollments": {"campaign_id": cid, "patient_id": "p2"}}
    paths = client.get("/openapi.json").json()["paths"]
    assert len(paths) >= 14
    for role in ("admin", "analyst"):
        theirs = key(services, "aurora", role)
        for path, methods in paths.items():
            url = path.format(**values)
            for method in methods:
                answer = client.request(method.upper(), url, headers=theirs,
                                        json=bodies.get(path),
                                        params={"campaign_id": cid, "patient_id": "p1"})
                assert answer.status_code in (200, 401, 403, 404, 409, 422), (method, url)
                if answer.status_code in (200, 202):  # nothing of vitoria's
                    assert cid not in answer.text and eid not in answer.text, (method, url)
                    assert job["job_id"] not in answer.text
                    assert "api-welcome" not in answer.text or path == "/v1/gallery"
    still = client.get(f"/v1/campaigns/{cid}", headers=mine).json()
    assert still["status"] == "active", "another clinic's key changed nothing"
    assert client.get(f"/v1/enrollments/{eid}", headers=mine).json()["status"] == "active"


def test_keys_and_roles(services: Services, client: TestClient) -> None:
    analyst = key(services, "vitoria", "analyst")
    assert client.get("/v1/campaigns").status_code == 401
    assert client.get("/v1/campaigns", headers={"X-API-Key": "drip_nope_nope"}).status_code == 401
    assert client.get("/v1/campaigns", headers=analyst).status_code == 200
    assert client.post("/v1/campaigns", json=WELCOME, headers=analyst).status_code == 403
    with services.pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT digest FROM api_keys")
        digests = [r[0] for r in cur.fetchall()]
        key_id = analyst["X-API-Key"].split("_")[1]
        assert analyst["X-API-Key"] not in digests and analyst["X-API-Key"].split("_")[2] not in str(digests)
        assert api_keys.revoke(cur, key_id, datetime.now(UTC))
    assert client.get("/v1/campaigns", headers=analyst).status_code == 401


def poll(client: TestClient, job: str, headers: dict[str, str],
         timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (found := client.get(f"/v1/jobs/{job}", headers=headers).json())["status"] in (
            "queued", "running"):
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
    return found


def test_bulk_enrollment_from_a_csv_is_a_job_and_idempotent(services: Services,
                                                            client: TestClient) -> None:
    admin = key(services, "vitoria", "admin")
    cid = client.post("/v1/campaigns", json=WELCOME, headers=admin).json()["campaign_id"]
    client.post(f"/v1/campaigns/{cid}/activate", headers=admin)
    csv = b"patient_id,appointment_id,starts_at\np1,,\np2,,\n,a9,\np3,,\n"
    started = client.post("/v1/enrollments/bulk", data={"campaign_id": cid},
                          files={"file": ("patients.csv", csv, "text/csv")}, headers=admin)
    assert started.status_code == 202, started.text
    job = poll(client, started.json()["job_id"], admin)
    assert job["status"] == "done" and job["kind"] == "bulk_enroll"
    assert job["result"]["created"] == 3 and job["result"]["existing"] == 0
    assert job["result"]["refused"] == [{"line": 4, "reason": "patient_id is empty"}]
    again = client.post("/v1/enrollments/bulk", data={"campaign_id": cid},
                        files={"file": ("patients.csv", csv, "text/csv")}, headers=admin)
    assert poll(client, again.json()["job_id"], admin)["result"]["existing"] == 3
    listed = client.get("/v1/enrollments", params={"campaign_id": cid}, headers=admin)
    services.projector.catch_up()
    listed = client.get("/v1/enrollments", params={"campaign_id": cid, "limit": 2},
                        headers=admin).json()
    page2 = client.get("/v1/enrollments", params={"campaign_id": cid, "limit": 2,
                                                  "cursor": listed["next_cursor"]},
                       headers=admin).json()
    ids = [i["enrollment_id"] for i in listed["items"] + page2["items"]]
    assert len(ids) == len(set(ids)) == 3 and page2["next_cursor"] is None
    not_csv = client.post("/v1/enrollments/bulk", data={"campaign_id": cid},
                          files={"file": ("x.csv", b"name\nx\n", "text/csv")}, headers=admin)
    assert not_csv.status_code == 422 and "patient_id" in not_csv.text
    theirs = key(services, "aurora", "admin")
    assert client.get(f"/v1/jobs/{started.json()['job_id']}", headers=theirs).status_code == 404


def test_a_backtest_over_http_runs_in_a_scratch_database(settings: Settings) -> None:
    from tests.shared_data import CSV

    settings = settings.model_copy(update={"dataset_csv": CSV})
    services = build(settings)
    try:
        services.app.apply_clinic(CLINIC)
        with TestClient(create_api(settings, services.app, services.pool)) as client:
            admin = key(services, "vitoria", "admin")
            reminders = yaml.safe_load((GALLERY / "appointment-reminders.yaml").read_text())
            started = client.post("/v1/backtests", headers=admin,
                                  json={"campaigns": [reminders], "limit": 300})
            assert started.status_code == 202, started.text
            job = poll(client, started.json()["job_id"], admin)
        assert job["status"] == "done", job
        expected = expected_report(CSV, 300)["campaigns"]["appointment-reminders"]
        got = job["result"]["campaigns"]["appointment-reminders"]
        assert {k: got[k] for k in ("enrolled", "completed")} == {
            k: expected[k] for k in ("enrolled", "completed")}
        with psycopg.connect(settings.database_url) as conn:  # nothing live was touched
            assert conn.execute("SELECT count(*) FROM enrollments").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE"
                                " 'drip_backtest_%%'").fetchone() == (0,)
    finally:
        services.close()
