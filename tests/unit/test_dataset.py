"""The mapping of the public no-show data set to upstream events (issue 2 §4)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from services.devtools.dataset import records, starts_at, timeline
from tests.shared_data import CSV

HEADER = ("PatientId,AppointmentID,Gender,ScheduledDay,AppointmentDay,Age,Neighbourhood,"
          "Scholarship,Hipertension,Diabetes,Alcoholism,Handcap,SMS_received,No-show\n")


def write(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "a.csv"
    path.write_text(HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_appointments_start_at_ten_local_in_sao_paulo() -> None:
    assert starts_at("2016-05-04T00:00:00Z") == datetime(2016, 5, 4, 13, 0, tzinfo=UTC)


def test_a_row_becomes_a_booking_then_its_outcome_an_hour_after_the_start(tmp_path: Path) -> None:
    path = write(tmp_path, "9.87654E+14,5642903,F,2016-04-29T18:38:08Z,2016-05-02T00:00:00Z,"
                           "62,JARDIM DA PENHA,0,1,0,0,0,0,Yes")
    booked, missed = (json.loads(r.value) for r in records(path))
    assert booked["type"] == "appointment.booked" and booked["time"] == "2016-04-29T18:38:08Z"
    assert booked["data"] == {"appointment_id": "5642903", "patient_id": "9.87654E+14",
                              "starts_at": "2016-05-02T13:00:00Z"}
    assert missed["type"] == "appointment.missed" and missed["time"] == "2016-05-02T14:00:00Z"


def test_the_timeline_is_in_time_order_not_file_order(tmp_path: Path) -> None:
    path = write(tmp_path,  # the second row was booked first
                 "1,10,F,2016-04-29T18:00:00Z,2016-05-02T00:00:00Z,1,X,0,0,0,0,0,0,No",
                 "2,11,F,2016-04-20T08:00:00Z,2016-04-29T00:00:00Z,1,X,0,0,0,0,0,0,Yes")
    assert [(json.loads(r.value)["id"], r.time.isoformat()) for r in timeline(path)] == [
        ("11:booked", "2016-04-20T08:00:00+00:00"),
        ("11:missed", "2016-04-29T14:00:00+00:00"),  # 10:00 Sao Paulo + 1 h
        ("10:booked", "2016-04-29T18:00:00+00:00"),
        ("10:attended", "2016-05-02T14:00:00+00:00")]


def test_the_shared_file_holds_110527_appointments() -> None:
    assert sum(1 for _ in records(CSV)) == 2 * 110_527
