"""The Campaign aggregate and its definition (§2).

A definition is a frozen value; the aggregate records it (`Campaign.Defined`) and its
status lifecycle `draft → active ⇄ paused → archived`. Only `active` campaigns enroll.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.calendar import ClinicCalendar
from domain.errors import InvalidCampaign
from domain.schedule import ENROLLMENT, PREVIOUS_STEP, Wait
from domain.stop_rules import StopReason

CHANNELS = frozenset({"sms", "email", "whatsapp", "push", "in_app"})
KINDS = frozenset({"reminder", "follow_up", "marketing", "reactivation", "survey"})
SUBJECTS = frozenset({"patient", "appointment"})


class CampaignStatus(StrEnum):
    """§2 lifecycle: `draft → active ⇄ paused`. Only `active` campaigns enroll and send."""

    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"


@dataclass(frozen=True)
class SendStep:
    """One `send` step: the message goes out on `channel` when `wait` says (§2)."""

    name: str
    channel: str
    template: str
    wait: Wait

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "channel": self.channel, "template": self.template,
                "wait": self.wait.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SendStep:
        return cls(data["name"], data["channel"], data["template"], Wait.from_dict(data["wait"]))


@dataclass(frozen=True)
class CampaignDefinition:
    """What a clinic defines (§2): trigger, subject, stop rules and ordered steps.

    `trigger` is an upstream event type (`appointment.booked`); `subject` is what one
    enrollment is per (§3 identity): `appointment` or `patient`. Raises `InvalidCampaign`.
    """

    clinic_id: str
    name: str
    kind: str
    time_zone: str
    trigger: str
    subject: str
    steps: tuple[SendStep, ...]
    stop_rules: frozenset[StopReason] = field(default_factory=frozenset)
    description: str = ""
    version: int = 1

    def __post_init__(self) -> None:
        if not self.steps:
            raise InvalidCampaign(f"campaign {self.name!r} has no steps")
        if self.kind not in KINDS:
            raise InvalidCampaign(f"unknown campaign kind {self.kind!r}")
        if self.subject not in SUBJECTS:
            raise InvalidCampaign(f"unknown enrollment subject {self.subject!r}")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise InvalidCampaign(f"campaign {self.name!r} repeats a step name")
        if bad := [s.channel for s in self.steps if s.channel not in CHANNELS]:
            raise InvalidCampaign(f"unknown channel(s) {bad}")

    @cached_property
    def id(self) -> UUID:
        return campaign_id(self.clinic_id, self.name)

    @cached_property
    def calendar(self) -> ClinicCalendar:
        """The calendar business-day and local-time waits count in: the campaign's time
        zone with the default §5 hours (Monday–Saturday 08:00–20:00), no holidays yet."""
        return ClinicCalendar(self.time_zone)

    @property
    def date_fields(self) -> frozenset[str]:
        """The subject's dates the steps wait on (wait-until anchors)."""
        return frozenset(s.wait.anchor for s in self.steps) - {ENROLLMENT, PREVIOUS_STEP}

    def stops_on(self, reason: StopReason) -> bool:
        return reason in self.stop_rules

    def to_dict(self) -> dict[str, Any]:
        return {
            "clinic_id": self.clinic_id, "name": self.name, "kind": self.kind,
            "time_zone": self.time_zone, "trigger": self.trigger, "subject": self.subject,
            "steps": [s.to_dict() for s in self.steps],
            "stop_rules": sorted(self.stop_rules), "description": self.description,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CampaignDefinition:
        return cls(
            clinic_id=data["clinic_id"], name=data["name"], kind=data["kind"],
            time_zone=data["time_zone"], trigger=data["trigger"], subject=data["subject"],
            steps=tuple(SendStep.from_dict(s) for s in data["steps"]),
            stop_rules=frozenset(StopReason(r) for r in data["stop_rules"]),
            description=data.get("description", ""), version=data.get("version", 1),
        )


def campaign_id(clinic_id: str, name: str) -> UUID:
    """A campaign's id: `uuid5` of (clinic, name), so defining it twice finds the first."""
    return uuid5(NAMESPACE_URL, f"drip:campaign:{clinic_id}:{name}")


class Campaign(Aggregate):
    """A clinic's campaign: its definition and status (§2 lifecycle)."""

    @event("Defined")
    def __init__(self, definition: dict[str, Any]) -> None:
        self.definition = CampaignDefinition.from_dict(definition)
        self.status = CampaignStatus.DRAFT

    @staticmethod
    def create_id(definition: dict[str, Any]) -> UUID:
        return campaign_id(definition["clinic_id"], definition["name"])

    @classmethod
    def define(cls, definition: CampaignDefinition) -> Campaign:
        return cls(definition=definition.to_dict())

    def activate(self) -> None:
        if self.status != CampaignStatus.ACTIVE:
            self._activated()

    @event("Activated")
    def _activated(self) -> None:
        self.status = CampaignStatus.ACTIVE

    def pause(self) -> None:
        if self.status == CampaignStatus.ACTIVE:
            self._paused()

    @event("Paused")
    def _paused(self) -> None:
        self.status = CampaignStatus.PAUSED
