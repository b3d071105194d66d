"""A campaign walked for one patient, without recording anything (§2 preview): every step's
due time in the clinic's local time, and what is sent (rendered) or why it is skipped,
decided by the real `Enrollment`. Used by `drip campaign preview` and the HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from domain.campaign import CampaignDefinition, SendStep
from domain.enrollment import Enrollment
from domain.schedule import APPOINTMENT_STARTS_AT
from domain.templating import MERGE_FIELDS, render


def preview(definition: CampaignDefinition, patient_id: str, at: datetime,
            starts_at: datetime, fields: dict[str, dict[str, str]]) -> list[str]:
    """The lines `drip campaign preview` prints: the enrollment walked to its end."""
    enrollment = Enrollment.enroll(definition, patient_id=patient_id, subject=patient_id,
                                   at=at, cause="preview",
                                   dates={APPOINTMENT_STARTS_AT: starts_at})
    enrollment.catch_up(definition, datetime.max.replace(tzinfo=UTC))
    cal, lines = definition.calendar, []
    context: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v
                               for k, v in MERGE_FIELDS.items()}
    context["patient"]["id"] = patient_id
    context["appointment"]["starts_at"] = starts_at
    context["campaign"]["name"] = definition.name
    for group, values in fields.items():
        context.setdefault(group, {}).update(values)
    lines.append(f"{definition.clinic_id}/{definition.name} v{definition.version} for patient "
                 f"{patient_id}, enrolled {cal.local(at):%Y-%m-%d %H:%M %Z}")
    for ev in enrollment.collect_events():
        kind = type(ev).__name__
        when = getattr(ev, "at", None) or getattr(ev, "due_at", None)
        local = f"{cal.local(when):%a %Y-%m-%d %H:%M %Z}" if when else "-"
        if kind == "MessageSent":
            step = definition.steps[ev.index]
            assert isinstance(step, SendStep)
            lines.append(f"{local}  send {ev.step} ({ev.channel})")
            if step.message is not None:
                context["campaign"]["step"] = ev.step
                msg = render(step.message, context, locale=definition.locale,
                             time_zone=definition.time_zone)
                if msg.subject:
                    lines.append(f"    subject: {msg.subject}")
                lines += [f"    {line}" for line in msg.body.splitlines()]
        elif kind == "StepSkipped":
            lines.append(f"{local}  skip {ev.step}: {ev.reason}")
        elif kind == "BranchTaken":
            lines.append(f"{local}  branch {ev.step}: {'then' if ev.taken else 'else'} → {ev.target}")
        elif kind == "VariantAssigned":
            lines.append(f"{local}  split {ev.step}: variant {ev.variant}")
        elif kind in ("Completed", "Stopped", "Ignored"):
            lines.append(f"{local}  {kind.lower()}" + (f": {ev.reason}" if hasattr(ev, "reason")
                                                       else ""))
    return lines
