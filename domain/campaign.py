"""The Campaign aggregate and its definition (§2).

A definition is a frozen value; the aggregate records it (`Campaign.Defined`), each
changed definition as a new version (`Campaign.Revised`, §2 versions), and its status
lifecycle `draft → active ⇄ paused → archived` (`completed` once its end date passed).
Only `active` campaigns enroll and send.

Steps (§2): `send`, `branch` (a condition picks the next step), `split` (A/B/n variants
with weights). Each step has a `wait` saying when it falls due; a campaign file's `wait`
items are folded into the step that follows them. Steps run in list order unless a step
names its `next` (or a branch/split its targets); jumps only go forward, so every path
ends and every step runs at most once per enrollment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Any, ClassVar
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain import conditions
from domain.calendar import ClinicCalendar
from domain.errors import InvalidCampaign
from domain.schedule import ENROLLMENT, PREVIOUS_STEP, Wait
from domain.stop_rules import StopReason
from domain.templating import MessageTemplate

CHANNELS = frozenset({"sms", "email", "whatsapp", "push", "in_app"})
KINDS = frozenset({"reminder", "follow_up", "marketing", "reactivation", "survey"})
SUBJECTS = frozenset({"patient", "appointment"})
END = "end"
"""The target that ends the enrollment (`completed`)."""
AFTER_PREVIOUS = Wait(PREVIOUS_STEP)


class CampaignStatus(StrEnum):
    """§2 lifecycle: `draft → active ⇄ paused → archived`; `completed` after the end date."""

    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    ARCHIVED = "archived"
    COMPLETED = "completed"


@dataclass(frozen=True)
class SendStep:
    """Send `message` (or the template named `template`) on `channel` when `wait` says."""

    type: ClassVar[str] = "send"
    name: str
    channel: str
    template: str
    wait: Wait = AFTER_PREVIOUS
    message: MessageTemplate | None = None
    next: str | None = None
    on_failure: str = "continue"
    """§6: when the message fails for good, `continue` the enrollment or `stop` it."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "channel": self.channel,
                               "template": self.template, "wait": self.wait.to_dict()}
        if self.message is not None:
            out["message"] = self.message.to_dict()
        if self.next is not None:
            out["next"] = self.next
        if self.on_failure != "continue":
            out["on_failure"] = self.on_failure
        return out

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.next,) if self.next else ()


@dataclass(frozen=True)
class BranchStep:
    """Go to `then` when `condition` holds at the step's due time, else to `otherwise`."""

    type: ClassVar[str] = "branch"
    name: str
    condition: Mapping[str, Any]
    then: str
    otherwise: str
    wait: Wait = AFTER_PREVIOUS

    def to_dict(self) -> dict[str, Any]:
        return {"type": "branch", "name": self.name, "condition": dict(self.condition),
                "then": self.then, "otherwise": self.otherwise, "wait": self.wait.to_dict()}

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.then, self.otherwise)


@dataclass(frozen=True)
class Variant:
    """One arm of a split: `weight` (> 0) of the total; `goto` None = the next step."""

    name: str
    weight: int
    goto: str | None = None


@dataclass(frozen=True)
class SplitStep:
    """A/B/n: each enrollment gets one variant, by a hash of its id (deterministic)."""

    type: ClassVar[str] = "split"
    name: str
    variants: tuple[Variant, ...]
    wait: Wait = AFTER_PREVIOUS

    def to_dict(self) -> dict[str, Any]:
        return {"type": "split", "name": self.name, "wait": self.wait.to_dict(),
                "variants": [{"name": v.name, "weight": v.weight, "goto": v.goto}
                             for v in self.variants]}

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(v.goto for v in self.variants if v.goto)

    def pick(self, key: int) -> Variant:
        """The variant for `key` (a hash), by cumulative weight."""
        point = key % sum(v.weight for v in self.variants)
        for v in self.variants:
            if point < v.weight:
                return v
            point -= v.weight
        raise AssertionError("unreachable: weights are positive")


Step = SendStep | BranchStep | SplitStep


def step_from_dict(data: Mapping[str, Any]) -> Step:
    """A stored step; steps recorded before branches existed have no `type` (send)."""
    wait = Wait.from_dict(data["wait"]) if "wait" in data else AFTER_PREVIOUS
    kind = data.get("type", "send")
    if kind == "branch":
        return BranchStep(data["name"], data["condition"], data["then"], data["otherwise"], wait)
    if kind == "split":
        return SplitStep(data["name"], tuple(Variant(v["name"], v["weight"], v.get("goto"))
                                             for v in data["variants"]), wait)
    message = data.get("message")
    return SendStep(data["name"], data["channel"], data["template"], wait,
                    MessageTemplate.from_dict(message) if message else None, data.get("next"),
                    data.get("on_failure", "continue"))


@dataclass(frozen=True)
class CampaignDefinition:
    """What a clinic defines (§2): trigger, subject, stop rules, deadline and steps.

    `trigger` is an upstream event type (`appointment.booked`); `subject` is what one
    enrollment is per (§3 identity): `appointment` or `patient`. `deadline` names a date on
    the subject after which the enrollment stops (`deadline_passed`, §4), `ends_at` (UTC)
    the campaign's end date. `calendar` is the clinic's (bound by the catalogue; default:
    the time zone with §5 default hours). Raises `InvalidCampaign`.
    """

    clinic_id: str
    name: str
    kind: str
    time_zone: str
    trigger: str
    subject: str
    steps: tuple[Step, ...]
    stop_rules: frozenset[StopReason] = field(default_factory=frozenset)
    description: str = ""
    version: int = 1
    deadline: str | None = None
    ends_at: datetime | None = None
    locale: str = "en"
    calendar: ClinicCalendar = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.calendar is None:
            object.__setattr__(self, "calendar", ClinicCalendar(self.time_zone))
        if not self.steps:
            raise InvalidCampaign(f"campaign {self.name!r} has no steps")
        if self.kind not in KINDS:
            raise InvalidCampaign(f"unknown campaign kind {self.kind!r}")
        if self.subject not in SUBJECTS:
            raise InvalidCampaign(f"unknown enrollment subject {self.subject!r}")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names) or END in names:
            raise InvalidCampaign(f"campaign {self.name!r} repeats a step name or names one "
                                  f"{END!r}")
        for i, step in enumerate(self.steps):
            where = f"step {step.name!r}"
            if isinstance(step, SendStep) and step.channel not in CHANNELS:
                raise InvalidCampaign(f"{where}: unknown channel {step.channel!r}")
            if isinstance(step, SendStep) and step.on_failure not in ("continue", "stop"):
                raise InvalidCampaign(f"{where}: on_failure is continue or stop")
            if isinstance(step, BranchStep):
                conditions.check(step.condition, f"{where}: condition")
            if isinstance(step, SplitStep) and (
                    not step.variants or any(v.weight <= 0 for v in step.variants)
                    or len({v.name for v in step.variants}) != len(step.variants)):
                raise InvalidCampaign(f"{where}: variants need distinct names and weights > 0")
            for target in step.targets:
                if target != END and target not in names:
                    raise InvalidCampaign(f"{where}: goes to unknown step {target!r}")
                if target != END and names.index(target) <= i:
                    raise InvalidCampaign(f"{where}: goes back to {target!r}; steps only "
                                          "go forward")

    @cached_property
    def id(self) -> UUID:
        return campaign_id(self.clinic_id, self.name)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {s.name: i for i, s in enumerate(self.steps)} | {END: len(self.steps)}

    def index_of(self, name: str) -> int:
        """A step's index (`end` is one past the last). Raises `KeyError`."""
        return self._index[name]

    def after(self, index: int) -> int:
        """The index of the step that follows step `index` when it is done (not a decision)."""
        step = self.steps[index]
        return self._index[step.next] if isinstance(step, SendStep) and step.next else index + 1

    def path_from(self, index: int) -> list[int]:
        """Step `index` and those that follow it, up to the end or a decision (exclusive)."""
        path = []
        while index < len(self.steps) and not isinstance(
                self.steps[index], BranchStep | SplitStep):
            path.append(index)
            index = self.after(index)
        return path

    @property
    def date_fields(self) -> frozenset[str]:
        """The subject's dates the steps wait on (wait-until anchors)."""
        return frozenset(s.wait.anchor for s in self.steps) - {ENROLLMENT, PREVIOUS_STEP}

    @property
    def sends(self) -> list[SendStep]:
        return [s for s in self.steps if isinstance(s, SendStep)]

    def stops_on(self, reason: StopReason) -> bool:
        return reason in self.stop_rules

    def status_at(self, status: CampaignStatus, now: datetime) -> CampaignStatus:
        """`status` as of `now`: an end date that passed makes it `completed` (§2)."""
        if self.ends_at is not None and now >= self.ends_at and status != CampaignStatus.ARCHIVED:
            return CampaignStatus.COMPLETED
        return status

    def content(self) -> dict[str, Any]:
        """The definition without its version: what makes two versions differ."""
        out = self.to_dict()
        del out["version"]
        return out

    def to_dict(self) -> dict[str, Any]:
        out = {
            "clinic_id": self.clinic_id, "name": self.name, "kind": self.kind,
            "time_zone": self.time_zone, "trigger": self.trigger, "subject": self.subject,
            "steps": [s.to_dict() for s in self.steps],
            "stop_rules": sorted(self.stop_rules), "description": self.description,
            "version": self.version,
        }
        if self.deadline is not None:
            out["deadline"] = self.deadline
        if self.ends_at is not None:
            out["ends_at"] = self.ends_at
        if self.locale != "en":
            out["locale"] = self.locale
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CampaignDefinition:
        return cls(
            clinic_id=data["clinic_id"], name=data["name"], kind=data["kind"],
            time_zone=data["time_zone"], trigger=data["trigger"], subject=data["subject"],
            steps=tuple(step_from_dict(s) for s in data["steps"]),
            stop_rules=frozenset(StopReason(r) for r in data["stop_rules"]),
            description=data.get("description", ""), version=data.get("version", 1),
            deadline=data.get("deadline"), ends_at=data.get("ends_at"),
            locale=data.get("locale", "en"),
        )


def campaign_id(clinic_id: str, name: str) -> UUID:
    """A campaign's id: `uuid5` of (clinic, name), so defining it twice finds the first."""
    return uuid5(NAMESPACE_URL, f"drip:campaign:{clinic_id}:{name}")


class Campaign(Aggregate):
    """A clinic's campaign: its versions and status (§2 lifecycle and versions).

    `definition` is the latest version; `versions[n]` each recorded one (1-based)."""

    @event("Defined")
    def __init__(self, definition: dict[str, Any]) -> None:
        self.definition = CampaignDefinition.from_dict(definition)
        self.versions = {self.definition.version: self.definition}
        self.status = CampaignStatus.DRAFT

    @staticmethod
    def create_id(definition: dict[str, Any]) -> UUID:
        return campaign_id(definition["clinic_id"], definition["name"])

    @classmethod
    def define(cls, definition: CampaignDefinition) -> Campaign:
        return cls(definition=definition.to_dict())

    def revise(self, definition: CampaignDefinition) -> bool:
        """Record `definition` as version n+1 if it differs from the latest (§2 versions);
        returns whether it did. Raises `InvalidCampaign` for another campaign's file or an
        archived campaign."""
        if definition.id != self.id:
            raise InvalidCampaign(f"{definition.name!r} is not campaign {self.definition.name!r}")
        if definition.content() == self.definition.content():
            return False
        if self.status == CampaignStatus.ARCHIVED:
            raise InvalidCampaign(f"campaign {definition.name!r} is archived")
        data = definition.to_dict()
        data["version"] = max(self.versions) + 1
        self._revised(data)
        return True

    @event("Revised")
    def _revised(self, definition: dict[str, Any]) -> None:
        self.definition = CampaignDefinition.from_dict(definition)
        self.versions = {**self.versions, self.definition.version: self.definition}

    def at_version(self, number: int) -> CampaignDefinition:
        """Version `number`. Raises `InvalidCampaign` when there is none."""
        try:
            return self.versions[number]
        except KeyError:
            raise InvalidCampaign(f"campaign {self.definition.name!r} has no version "
                                  f"{number}") from None

    def activate(self) -> bool:
        """draft or paused → active. Raises `InvalidCampaign` when archived."""
        self._refuse_if_archived("activate")
        if self.status == CampaignStatus.ACTIVE:
            return False
        self._activated()
        return True

    @event("Activated")
    def _activated(self) -> None:
        self.status = CampaignStatus.ACTIVE

    def pause(self, at: datetime | None = None) -> bool:
        """active → paused: due steps are held (§2). Only an active campaign pauses."""
        if self.status != CampaignStatus.ACTIVE:
            return False
        self._paused(at)
        return True

    @event("Paused")
    def _paused(self, at: datetime | None = None) -> None:
        self.status = CampaignStatus.PAUSED

    def resume(self, at: datetime) -> bool:
        """paused → active: held steps are sent now, or skipped past their deadline (§2)."""
        if self.status != CampaignStatus.PAUSED:
            return False
        self._resumed(at)
        return True

    @event("Resumed")
    def _resumed(self, at: datetime) -> None:
        self.status = CampaignStatus.ACTIVE

    def archive(self, at: datetime) -> bool:
        """→ archived, for good: no enrollment, and enrollments in flight stop at their next
        step (`campaign_archived`)."""
        if self.status == CampaignStatus.ARCHIVED:
            return False
        self._archived(at)
        return True

    @event("Archived")
    def _archived(self, at: datetime) -> None:
        self.status = CampaignStatus.ARCHIVED

    def _refuse_if_archived(self, what: str) -> None:
        if self.status == CampaignStatus.ARCHIVED:
            raise InvalidCampaign(f"cannot {what} archived campaign {self.definition.name!r}")
