"""Campaign and clinic definitions as data (§2): the YAML/JSON files clinic staff write,
validated like the events, with a published JSON Schema (`drip campaign schema`,
`contracts/schemas/*.schema.json`).

A campaign file:
```yaml
clinic: vitoria
name: appointment-reminders          # lowercase letters, digits and dashes
kind: reminder                       # reminder | follow_up | marketing | reactivation | survey
trigger: appointment.booked          # an upstream event type (§3)
subject: appointment                 # appointment | patient (§3 identity)
stop_on: [appointment_cancelled, opted_out]
steps:
  - send: confirmation               # a send step and its name
    channel: sms
    body: "Hi {{ patient.first_name }}, see you {{ appointment.starts_at | local_date }}"
  - wait: {hours: 48, before: appointment.starts_at}
  - send: reminder-48h
    channel: sms
    body: "..."
  - branch: replied                  # if / then / else name later steps (or `end`)
    if: {replied: true}
    then: end
    else: reminder-48h-again
  - split: offer                     # A/B/n, weights, deterministic per enrollment
    variants: [{name: a, weight: 50}, {name: b, weight: 50, goto: offer-b}]
```
A `wait` item sets when the next step falls due (default: right after the previous
step); fixed delays add up (`minutes`, `hours`, `days`, `weeks`), `business_days` count
in the clinic's calendar, `before`/`after` name a date on the subject (wait-until) or
`enrollment`, and `at: "07:00"` moves to that local time of day (with `days`/`weeks` as
whole days before or after the date). Unknown keys are refused, so a typo is an error.
"""

from __future__ import annotations

from datetime import date, time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    model_validator,
)

from contracts.envelope import Id, UtcDatetime
from contracts.patients import Channel

Name = Annotated[str, StringConstraints(min_length=1, max_length=64,
                                        pattern=r"^[a-z0-9][a-z0-9-]*$")]
"""A campaign or step name: lowercase letters, digits and dashes (`reminder-48h`)."""
DateField = Annotated[str, StringConstraints(pattern=r"^(enrollment|[a-z_]+\.[a-z_]+)$")]
"""`enrollment` or a date on the subject such as `appointment.starts_at`."""
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
StopOn = Literal["appointment_booked", "responded", "opted_out", "appointment_cancelled",
                 "appointment_attended"]
Kind = Literal["reminder", "follow_up", "marketing", "reactivation", "survey"]


class Spec(BaseModel):
    """Base of definition files: frozen and strict about unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class WaitSpec(Spec):
    minutes: int = Field(0, ge=0, le=1_000_000)
    hours: int = Field(0, ge=0, le=100_000)
    days: int = Field(0, ge=0, le=10_000)
    weeks: int = Field(0, ge=0, le=1_000)
    business_days: int = Field(0, ge=0, le=500, description="Counted in the clinic's calendar")
    before: DateField | None = Field(None, description="Wait until this long before a date")
    after: DateField | None = Field(
        None, description="Count from a date, or `enrollment` (default: the previous step)")
    at: time | None = Field(None, description="Then at this local time of day (clinic zone)")

    @model_validator(mode="after")
    def _coherent(self) -> WaitSpec:
        if self.before and self.after:
            raise ValueError("give either before or after, not both")
        if self.before and self.business_days:
            raise ValueError("business_days count forward: use after, not before")
        if self.at is not None and (self.minutes or self.hours):
            raise ValueError("with at, only days or weeks say which day")
        if self.before == "enrollment":
            raise ValueError("nothing can be before the enrollment")
        return self


class WaitItem(Spec):
    wait: WaitSpec


class SendSpec(Spec):
    send: Name = Field(description="The step's name")
    channel: Channel
    body: str = Field(min_length=1, max_length=10_000, description="Jinja2 template")
    subject: str | None = Field(None, max_length=500, description="E-mail subject template")
    template: str | None = Field(None, max_length=200, description="Template id for gateways")
    next: Name | None = Field(None, description="The step after this one (`end` to finish)")
    on_failure: Literal["continue", "stop"] = Field(
        "continue", description="When delivery fails for good (§6): go on, or stop")

    @model_validator(mode="after")
    def _email_has_subject(self) -> SendSpec:
        if self.channel == "email" and not self.subject:
            raise ValueError("an email step needs a subject")
        return self


class BranchSpec(Spec):
    branch: Name = Field(description="The step's name")
    if_: dict[str, Any] = Field(alias="if", description=(
        "One of {replied: bool}, {consent: channel}, {sent: step}, {attribute: {field, op, "
        "value}}, {all: [...]}, {any: [...]}, {not: {...}}"))
    then: Name
    else_: Name = Field(alias="else")


class VariantSpec(Spec):
    name: Name
    weight: int = Field(gt=0, le=1_000_000)
    goto: Name | None = Field(None, description="Default: the step after the split")


class SplitSpec(Spec):
    split: Name = Field(description="The step's name")
    variants: list[VariantSpec] = Field(min_length=2, max_length=26)


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return next((k for k in ("send", "wait", "branch", "split") if k in value), None)
    return next((k for k in ("send", "wait", "branch", "split") if hasattr(value, k)), None)


StepItem = Annotated[
    Annotated[SendSpec, Tag("send")] | Annotated[WaitItem, Tag("wait")]
    | Annotated[BranchSpec, Tag("branch")] | Annotated[SplitSpec, Tag("split")],
    Discriminator(_step_kind, custom_error_type="step_kind",
                  custom_error_message="a step is one of send, wait, branch, split")]


class CampaignSpec(Spec):
    """A campaign file (§2). `time_zone` and `locale` default to the clinic's."""

    clinic: Id
    name: Name
    kind: Kind
    description: str = Field("", max_length=2000)
    trigger: str = Field(min_length=1, max_length=100, description="Upstream event type (§3)")
    subject: Literal["appointment", "patient"] = "patient"
    time_zone: str | None = None
    locale: str | None = None
    stop_on: list[StopOn] = Field(default_factory=list)
    deadline: DateField | None = Field(None, description="A date after which enrollments stop")
    ends_at: UtcDatetime | None = Field(None, description="The campaign's end date (UTC)")
    steps: list[StepItem] = Field(min_length=1, max_length=100)


class BusinessHours(Spec):
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS[:6]), min_length=1)
    opens: time = time(8)
    closes: time = time(20)


class HolidaySource(Spec):
    country: str = Field(min_length=2, max_length=3, description="ISO 3166 code, `holidays`")
    subdivision: str | None = Field(None, max_length=10)


class QuietHours(Spec):
    start: time
    end: time


class Limits(Spec):
    """§5 guardrails, recorded now and enforced by the guardrails issue."""

    quiet_hours: QuietHours | None = None
    marketing_per_7_days: int = Field(1, ge=0)
    reentry_cooldown_days: int = Field(30, ge=0)
    messages_per_second: dict[Channel, float] = Field(default_factory=dict)
    max_active_campaigns: int = Field(10, ge=1)


class ClinicSpec(Spec):
    """A clinic file (§1, §2 calendar, §5)."""

    clinic: Id
    name: str = Field(min_length=1, max_length=200)
    time_zone: str = Field(description="IANA time zone, e.g. America/Sao_Paulo")
    locale: str = Field("pt_BR", pattern=r"^[a-z]{2}([_-][A-Z]{2})?$")
    phone: str = Field("", max_length=40, description="The clinic's phone (merge field)")
    booking_url: str = Field("", max_length=500, description="Where patients book (merge field)")
    business_hours: BusinessHours = Field(default_factory=BusinessHours)
    holidays: HolidaySource | None = None
    closed_on: list[date] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
