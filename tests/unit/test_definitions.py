"""Campaign and clinic files (§2 definitions as data): validation that names the file, the
step and the field; waits as written; templates refused when applied; the published
JSON Schema."""

from __future__ import annotations

import json
from datetime import date, time, timedelta
from pathlib import Path

import pytest
import yaml

from contracts.campaigns import CampaignSpec, ClinicSpec
from domain.campaign import BranchStep, SendStep, SplitStep
from domain.schedule import ENROLLMENT, PREVIOUS_STEP, Wait
from services.application.definitions import (
    DefinitionError,
    holidays_of,
    load_campaign,
    load_clinic,
)
from tests.gallery import CLINIC, GALLERY, campaign

SCHEMAS = Path(__file__).resolve().parents[2] / "contracts" / "schemas"
BASE = {"clinic": "vitoria", "name": "x", "kind": "reminder", "trigger": "appointment.booked",
        "subject": "appointment"}


def write(tmp_path: Path, doc: dict[str, object], name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def problems(tmp_path: Path, steps: list[dict[str, object]], **top: object) -> list[str]:
    path = write(tmp_path, {**BASE, **top, "steps": steps})
    with pytest.raises(DefinitionError) as refused:
        load_campaign(path, CLINIC)
    return refused.value.problems


class TestValidationNamesFileStepAndField:
    def test_an_unknown_channel(self, tmp_path: Path) -> None:
        found = problems(tmp_path, [{"send": "a", "channel": "sms", "body": "hi"},
                                    {"send": "ping", "channel": "fax", "body": "hi"}])
        assert len(found) == 1
        assert found[0].startswith(f"{tmp_path / 'c.yaml'}: steps[1] (send 'ping'): channel:")
        assert "'sms'" in found[0]

    def test_a_typo_in_a_wait_is_refused_not_ignored(self, tmp_path: Path) -> None:
        found = problems(tmp_path, [{"wait": {"hour": 2}}, {"send": "a", "channel": "sms",
                                                            "body": "x"}])
        assert found == [f"{tmp_path / 'c.yaml'}: steps[0]: wait.hour: Extra inputs are not "
                         "permitted"]

    def test_every_problem_at_once(self, tmp_path: Path) -> None:
        found = problems(tmp_path, [{"send": "A b", "channel": "sms", "body": ""},
                                    {"shout": "x"}], kind="spam")
        assert [p.split(": ")[1] for p in found] == ["kind", "steps[0] (send 'A b')",
                                                      "steps[0] (send 'A b')", "steps[1]"]

    def test_a_template_with_an_unknown_field_is_refused_when_applied(self, tmp_path: Path) -> None:
        found = problems(tmp_path, [{"send": "hello", "channel": "sms",
                                     "body": "Hi {{ patient.nickname }}"}])
        assert found[0].startswith(f"{tmp_path / 'c.yaml'}: steps[0] (send 'hello'): body:")
        assert "nickname" in found[0]

    def test_an_email_needs_a_subject_and_its_subject_is_checked(self, tmp_path: Path) -> None:
        assert "needs a subject" in problems(tmp_path, [
            {"send": "e", "channel": "email", "body": "x"}])[0]
        assert "subject" in problems(tmp_path, [
            {"send": "e", "channel": "email", "body": "x", "subject": "{{ nope }}"}])[0]

    def test_jumps_only_forward_and_to_known_steps(self, tmp_path: Path) -> None:
        steps: list[dict[str, object]] = [
            {"send": "a", "channel": "sms", "body": "x"},
            {"branch": "b", "if": {"replied": True}, "then": "a", "else": "end"}]
        assert "goes back to 'a'" in problems(tmp_path, steps)[0]
        steps[1]["then"] = "zzz"
        assert "unknown step 'zzz'" in problems(tmp_path, steps)[0]

    def test_a_malformed_condition(self, tmp_path: Path) -> None:
        found = problems(tmp_path, [{"send": "a", "channel": "sms", "body": "x"},
                                    {"branch": "b", "if": {"smiles": True}, "then": "c",
                                     "else": "end"},
                                    {"send": "c", "channel": "sms", "body": "x"}])
        assert "step 'b': condition: unknown condition 'smiles'" in found[0]

    def test_two_waits_in_a_row_and_a_trailing_wait(self, tmp_path: Path) -> None:
        found = problems(tmp_path, [{"wait": {"hours": 1}}, {"wait": {"hours": 2}},
                                    {"send": "a", "channel": "sms", "body": "x"},
                                    {"wait": {"days": 1}}])
        assert "steps[1]: two waits in a row" in found[0]
        assert "steps[3]: a wait must be followed by a step" in found[1]

    def test_an_unknown_trigger_and_a_clinic_never_applied(self, tmp_path: Path) -> None:
        path = write(tmp_path, {**BASE, "clinic": "elsewhere", "trigger": "patient.sneezed",
                                "steps": [{"send": "a", "channel": "sms", "body": "x"}]})
        with pytest.raises(DefinitionError) as refused:
            load_campaign(path, None)
        assert [p.split(": ")[1] for p in refused.value.problems] == ["clinic", "trigger"]

    def test_not_yaml_at_all(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.yaml"
        path.write_text("steps: [unclosed")
        with pytest.raises(DefinitionError, match="bad.yaml: not valid YAML"):
            load_campaign(path, CLINIC)


class TestWaitsAsWritten:
    """A wait item is the `Wait` of the step after it (§2 wait and wait-until)."""

    @pytest.mark.parametrize(("wait", "expected"), [
        ({"hours": 48, "before": "appointment.starts_at"},
         Wait("appointment.starts_at", -timedelta(hours=48))),
        ({"hours": 2, "after": "enrollment"}, Wait(ENROLLMENT, timedelta(hours=2))),
        ({"days": 3, "minutes": 30}, Wait(PREVIOUS_STEP, timedelta(days=3, minutes=30))),
        ({"business_days": 2}, Wait(PREVIOUS_STEP, business_days=2)),
        ({"at": "07:00", "after": "appointment.starts_at"},
         Wait("appointment.starts_at", local_time=time(7))),
        ({"at": "09:00", "days": 2, "before": "appointment.starts_at"},
         Wait("appointment.starts_at", local_time=time(9), day_offset=-2)),
        ({"weeks": 26, "after": "enrollment", "at": "10:00"},
         Wait(ENROLLMENT, local_time=time(10), day_offset=182)),
    ])
    def test_wait(self, tmp_path: Path, wait: dict[str, object], expected: Wait) -> None:
        path = write(tmp_path, {**BASE, "steps": [{"wait": wait}, {"send": "a",
                                                                   "channel": "sms",
                                                                   "body": "x"}]})
        step = load_campaign(path, CLINIC).steps[0]
        assert step.wait == expected

    @pytest.mark.parametrize("wait", [{"hours": 1, "at": "07:00"},
                                      {"before": "a.b", "after": "enrollment"},
                                      {"business_days": 1, "before": "a.b"},
                                      {"before": "enrollment"}])
    def test_incoherent_waits_are_refused(self, tmp_path: Path, wait: dict[str, object]) -> None:
        assert problems(tmp_path, [{"wait": wait}, {"send": "a", "channel": "sms", "body": "x"}])


class TestGallery:
    def test_every_gallery_file_is_valid(self) -> None:
        names = sorted(p.stem for p in GALLERY.glob("*.yaml"))
        assert names == ["appointment-reminders", "benefits-expiry", "crm-email-sequence",
                         "new-patient-welcome", "no-show-recovery", "post-treatment-care",
                         "re-engagement", "recall-recare"]
        for name in names:
            assert campaign(name).name == name

    def test_the_demo_campaigns_keep_their_meaning(self) -> None:
        """The demo's report is a fixed point: the YAML files say what the Python
        definitions said (names, channels, template ids, stop rules, due times)."""
        reminders = campaign("appointment-reminders")
        assert [(s.name, s.channel, s.template) for s in reminders.sends] == [
            ("confirmation", "sms", "reminders/confirmation"),
            ("reminder-48h", "sms", "reminders/48h"),
            ("reminder-day-of", "sms", "reminders/day-of")]
        assert sorted(reminders.stop_rules) == ["appointment_cancelled", "opted_out"]
        assert [s.wait for s in reminders.steps][1:] == [
            Wait("appointment.starts_at", -timedelta(hours=48)),
            Wait("appointment.starts_at", -timedelta(hours=3))]
        recovery = campaign("no-show-recovery")
        assert [(s.name, s.channel, s.wait) for s in recovery.sends] == [
            ("we-missed-you", "sms", Wait(ENROLLMENT, timedelta(hours=2))),
            ("rebook-nudge", "email", Wait(PREVIOUS_STEP, timedelta(days=3))),
            ("last-chance", "sms", Wait(PREVIOUS_STEP, timedelta(days=7)))]
        assert sorted(recovery.stop_rules) == ["appointment_booked", "opted_out", "responded"]
        assert (reminders.trigger, recovery.trigger) == ("appointment.booked",
                                                         "appointment.missed")

    def test_step_kinds(self) -> None:
        kinds = [type(s) for s in campaign("re-engagement").steps]
        assert kinds == [SplitStep, SendStep, SendStep, SendStep]
        assert isinstance(campaign("post-treatment-care").steps[2], BranchStep)


class TestClinic:
    def test_the_demo_clinic(self) -> None:
        clinic = load_clinic(GALLERY / "clinics" / "vitoria.yaml")
        assert (clinic.time_zone, clinic.locale, clinic.open_days) == (
            "America/Sao_Paulo", "pt_BR", frozenset(range(6)))
        found = holidays_of(clinic, [2016])
        assert date(2016, 4, 21) in found  # Tiradentes, national
        calendar = clinic.calendar(found)
        assert not calendar.is_business_day(date(2016, 4, 21))
        assert calendar.is_business_day(date(2016, 4, 22))

    def test_subdivision_holidays_and_the_clinics_own_closed_days(self, tmp_path: Path) -> None:
        clinic = load_clinic(write(tmp_path, {
            "clinic": "sp", "name": "SP", "time_zone": "America/Sao_Paulo",
            "holidays": {"country": "BR", "subdivision": "SP"},
            "closed_on": ["2016-12-24"]}, "clinic.yaml"))
        calendar = clinic.calendar(holidays_of(clinic, [2016]))
        assert not calendar.is_business_day(date(2016, 7, 9))  # São Paulo state only
        assert not calendar.is_business_day(date(2016, 12, 24))  # the clinic's own
        assert calendar.is_business_day(date(2016, 12, 23))

    def test_bad_clinics(self, tmp_path: Path) -> None:
        good = {"clinic": "c", "name": "C", "time_zone": "America/Sao_Paulo"}
        for bad, what in [({"time_zone": "Mars/Olympus"}, "unknown IANA time zone"),
                          ({"business_hours": {"opens": "20:00", "closes": "08:00"}},
                           "open before they close"),
                          ({"holidays": {"country": "ZZ"}}, "unknown country"),
                          ({"business_hours": {"days": ["funday"]}}, "business_hours.days")]:
            with pytest.raises(DefinitionError, match=what):
                load_clinic(write(tmp_path, {**good, **bad}, "clinic.yaml"))


@pytest.mark.parametrize(("model", "name"), [(CampaignSpec, "campaign"), (ClinicSpec, "clinic")])
def test_the_published_json_schema_is_current(model: type[CampaignSpec | ClinicSpec],
                                              name: str) -> None:
    """contracts/schemas/*.schema.json is what `drip campaign schema` prints; regenerate it
    with `drip campaign schema > contracts/schemas/campaign.schema.json` when it changes."""
    published = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    assert published == model.model_json_schema(by_alias=True)


def test_a_file_that_validates_against_the_schema_loads() -> None:
    """The schema and the loader agree on a gallery file (YAML → JSON → schema types)."""
    doc = yaml.safe_load((GALLERY / "recall-recare.yaml").read_text())
    spec = CampaignSpec.model_validate(json.loads(json.dumps(doc, default=str)))
    assert spec.name == "recall-recare"
