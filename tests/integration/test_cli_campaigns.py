"""`drip clinic …` and `drip campaign …` as a clinic's staff use them, on the real
PostgreSQL (issue 7: apply, preview, activate, pause, resume, edit, archive from the CLI)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from services.cli import app
from services.settings import Settings
from tests.gallery import GALLERY

runner = CliRunner()
CLINIC = str(GALLERY / "clinics" / "vitoria.yaml")
RECALL = GALLERY / "recall-recare.yaml"


@pytest.fixture(autouse=True)
def database(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIP_DATABASE_URL", settings.database_url)


def drip(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def test_a_campaign_from_file_to_archive(tmp_path: Path) -> None:
    assert "clinic vitoria: registered" in drip("clinic", "apply", CLINIC)
    assert "clinic vitoria: unchanged" in drip("clinic", "apply", CLINIC)
    assert "vitoria/recall-recare: defined, version 1, draft" in drip(
        "campaign", "apply", str(RECALL))
    assert "new campaign" not in drip("campaign", "diff", str(RECALL))

    edited = tmp_path / "recall-recare.yaml"
    doc = yaml.safe_load(RECALL.read_text())
    doc["steps"][0]["wait"]["weeks"] = 24
    edited.write_text(yaml.safe_dump(doc, allow_unicode=True))
    diff = drip("campaign", "diff", str(edited), code=1)
    assert "-  wait:" not in diff and "day_offset: 168" in diff and "day_offset: 182" in diff
    assert "revised, version 2" in drip("campaign", "apply", str(edited))
    assert "unchanged, version 2" in drip("campaign", "apply", str(edited))

    shown = yaml.safe_load(drip("campaign", "show", "recall-recare", "--version", "1"))
    assert (shown["status"], shown["versions"], shown["version"]) == ("draft", [1, 2], 1)
    assert shown["steps"][0]["wait"]["day_offset"] == 182

    assert "active" in drip("campaign", "activate", "recall-recare")
    assert "paused" in drip("campaign", "pause", "recall-recare")
    assert "paused (unchanged)" in drip("campaign", "pause", "recall-recare")
    assert "active" in drip("campaign", "resume", "recall-recare")
    listing = drip("campaign", "list")
    assert "recall-recare" in listing and "active" in listing
    assert "0 enrollments moved to version 2" in drip("campaign", "migrate", "recall-recare",
                                                       "--to", "2")
    assert "archived" in drip("campaign", "archive", "recall-recare")
    assert "archived" in drip("campaign", "activate", "recall-recare", code=2)
    drip("campaign", "show", "nothing-here", code=3)


def test_a_bad_file_names_file_step_and_field_and_records_nothing(tmp_path: Path) -> None:
    drip("clinic", "apply", CLINIC)
    bad = tmp_path / "bad.yaml"
    shutil.copy(RECALL, bad)
    bad.write_text(bad.read_text().replace("channel: sms", "channel: pigeon"))
    out = drip("campaign", "apply", str(RECALL), str(bad), code=2)
    assert "bad.yaml: steps[1] (send 'recall-invite'): channel:" in " ".join(out.split())
    assert "recall-recare" not in drip("campaign", "list")  # nothing of the batch recorded


def test_preview_renders_every_step_in_local_time() -> None:
    drip("clinic", "apply", CLINIC)
    out = drip("campaign", "preview", str(GALLERY / "appointment-reminders.yaml"),
               "--patient", "42", "--at", "2026-03-02T12:00:00+00:00",
               "--starts-at", "2026-03-06T13:00:00+00:00", "--set", "patient.first_name=Ana")
    lines = out.splitlines()
    assert lines[0].startswith("vitoria/appointment-reminders v1 for patient 42, enrolled "
                               "2026-03-02 09:00")
    sends = [line for line in lines if " send " in line]
    assert [s.split()[0:3] for s in sends] == [["Mon", "2026-03-02", "09:00"],
                                               ["Wed", "2026-03-04", "10:00"],
                                               ["Fri", "2026-03-06", "07:00"]]
    assert any("Clínica Vitória é sexta-feira, 6 de mar. de 2026, às 10:00" in line
               for line in lines)  # the clinic's own fields, in its zone and language
    assert lines[-1].endswith("completed")


def test_preview_of_a_draft_file_against_a_clinic_file_without_a_database(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIP_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    out = drip("campaign", "preview", str(GALLERY / "crm-email-sequence.yaml"), "--patient",
               "7", "--at", "2026-12-04T20:00:00Z", "--clinic", CLINIC)
    days = [line.split()[:3] for line in out.splitlines() if " send " in line]
    assert days[0] == ["Sat", "2026-12-05", "09:00"]  # next business day, 09:00 local
    assert all(d[0] != "Sun" for d in days)  # business days only
