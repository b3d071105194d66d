"""Campaign and clinic files (§2 definitions as data) → domain values.

`load_campaign(path, clinic)` reads YAML or JSON, validates it against
`contracts.campaigns.CampaignSpec`, folds `wait` items into the step that follows them,
checks every template against the merge fields (`domain.templating.check`), and returns
a `CampaignDefinition`. Every refusal is a `DefinitionError` whose lines name the file,
the step and the field, e.g.
`campaigns/x.yaml: steps[2] (send 'reminder-48h'): channel: Input should be 'sms', ...`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import holidays as holiday_calendars
import yaml
from pydantic import BaseModel, ValidationError

from contracts.campaigns import (
    WEEKDAYS,
    BranchSpec,
    CampaignSpec,
    ClinicSpec,
    SendSpec,
    SplitSpec,
    WaitItem,
    WaitSpec,
)
from contracts.topics import UPSTREAM_SCHEMAS
from domain.campaign import (
    BranchStep,
    CampaignDefinition,
    SendStep,
    SplitStep,
    Step,
    Variant,
)
from domain.clinic import ClinicSettings
from domain.errors import DomainError
from domain.schedule import ENROLLMENT, PREVIOUS_STEP, Wait
from domain.stop_rules import StopReason
from domain.templating import MessageTemplate, TemplateError, check

MAX_FILE_BYTES = 1 << 20
TRIGGERS = frozenset(t for t, _ in UPSTREAM_SCHEMAS)


class DefinitionError(ValueError):
    """A definition file that cannot be applied; `problems` are its lines (file: where: what)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def read_document(path: Path) -> Any:
    """The YAML (or JSON) document in `path`. Raises `DefinitionError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DefinitionError([f"{path}: cannot read: {exc.strerror}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise DefinitionError([f"{path}: larger than {MAX_FILE_BYTES} bytes"])
    try:
        return yaml.safe_load(raw) if path.suffix != ".json" else json.loads(raw)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise DefinitionError([f"{path}: not valid YAML/JSON: {exc}"]) from None


def _validated(model: type[BaseModel], document: Any, source: str) -> Any:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise DefinitionError([f"{source}: {_where(document, e['loc'])}: {e['msg']}"
                               for e in exc.errors()]) from None


def _where(document: Any, loc: Sequence[Any]) -> str:
    """`steps[2] (send 'reminder-48h'): channel` for a pydantic error location."""
    parts, node = [], document
    for i, key in enumerate(loc):
        if isinstance(key, int) and isinstance(node, list) and key < len(node):
            item = node[key]
            label = next((f" ({k} {item[k]!r})" for k in ("send", "branch", "split")
                          if isinstance(item, dict) and k in item), "")
            parts[-1:] = [f"{parts[-1] if parts else ''}[{key}]{label}"]
            node = item
        elif i > 1 and loc[i - 2] == "steps" and key in ("send", "wait", "branch", "split"):
            continue  # the discriminator tag pydantic puts in the path
        else:
            parts.append(str(key))
            node = node.get(key) if isinstance(node, dict) else None
    head, *rest = parts or ["(file)"]
    return f"{head}: {'.'.join(rest)}" if rest and "[" in head else ".".join(parts)


# -- clinics ------------------------------------------------------------------------
def load_clinic(path: Path) -> ClinicSettings:
    """A clinic file → `ClinicSettings`. Raises `DefinitionError`."""
    spec: ClinicSpec = _validated(ClinicSpec, read_document(path), str(path))
    try:
        return clinic_settings(spec)
    except DomainError as exc:
        raise DefinitionError([f"{path}: {exc}"]) from None


def clinic_settings(spec: ClinicSpec) -> ClinicSettings:
    hours = spec.business_hours
    if spec.holidays is not None:
        _holidays(spec.holidays.country, spec.holidays.subdivision, 2020)  # refuse unknown
    return ClinicSettings(
        clinic_id=spec.clinic, name=spec.name, time_zone=spec.time_zone,
        locale=spec.locale.replace("-", "_"),
        open_days=frozenset(WEEKDAYS.index(d) for d in hours.days), opens=hours.opens,
        closes=hours.closes,
        holiday_country=spec.holidays.country if spec.holidays else None,
        holiday_subdivision=spec.holidays.subdivision if spec.holidays else None,
        closed_on=frozenset(spec.closed_on), limits=spec.limits.model_dump(mode="json"),
        phone=spec.phone, booking_url=spec.booking_url)


def plain(data: Any) -> Any:
    """`data` as plain JSON values (datetimes, UUIDs and the like as text)."""
    return json.loads(json.dumps(data, default=str))


def definition_diff(old: CampaignDefinition, new: CampaignDefinition,
                    new_label: str) -> list[str]:
    """A unified diff of two versions' content as YAML (empty when they are equal)."""
    a, b = (yaml.safe_dump(plain(d.content()), sort_keys=False, allow_unicode=True
                           ).splitlines() for d in (old, new))
    return list(difflib.unified_diff(a, b, f"version {old.version}", new_label, lineterm=""))


def clinic_document(settings: ClinicSettings) -> dict[str, Any]:
    """A clinic as applied → the clinic file that applies it (the inverse of
    `clinic_settings`), e.g. to backtest with it."""
    return {
        "clinic": settings.clinic_id, "name": settings.name, "time_zone": settings.time_zone,
        "locale": settings.locale, "phone": settings.phone, "booking_url": settings.booking_url,
        "business_hours": {"days": [WEEKDAYS[d] for d in sorted(settings.open_days)],
                           "opens": settings.opens.isoformat("minutes"),
                           "closes": settings.closes.isoformat("minutes")},
        "holidays": ({"country": settings.holiday_country,
                      "subdivision": settings.holiday_subdivision}
                     if settings.holiday_country else None),
        "closed_on": sorted(d.isoformat() for d in settings.closed_on),
        "limits": dict(settings.limits)}


@lru_cache(maxsize=64)
def _holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    try:
        found = holiday_calendars.country_holidays(country, subdiv=subdivision, years=year)
    except NotImplementedError:
        raise DefinitionError([f"holidays: unknown country or subdivision "
                               f"{country}/{subdivision}"]) from None
    return frozenset(found)


def holidays_of(settings: ClinicSettings, years: Iterable[int] = range(2010, 2041)) -> set[date]:
    """The public holidays of the clinic's country and subdivision in `years`."""
    if settings.holiday_country is None:
        return set()
    out: set[date] = set()
    for year in years:
        out |= _holidays(settings.holiday_country, settings.holiday_subdivision, year)
    return out


# -- campaigns ----------------------------------------------------------------------
def load_campaign(path: Path, clinic: ClinicSettings | None) -> CampaignDefinition:
    """A campaign file → `CampaignDefinition` (version 1; the aggregate numbers versions).

    `clinic` gives the default time zone and locale and must be the file's clinic; None
    only when the file names its own `time_zone`. Raises `DefinitionError`."""
    return compile_campaign(read_campaign_spec(path), clinic, str(path))


def parse_campaign_spec(document: Any, source: str = "(campaign)") -> CampaignSpec:
    """A campaign document (parsed JSON/YAML), validated. Raises `DefinitionError`
    naming `source`, the step and the field."""
    spec: CampaignSpec = _validated(CampaignSpec, document, source)
    return spec


def read_campaign_spec(path: Path) -> CampaignSpec:
    """A campaign file, validated but not compiled (its clinic is `spec.clinic`)."""
    spec: CampaignSpec = _validated(CampaignSpec, read_document(path), str(path))
    return spec


def compile_campaign(spec: CampaignSpec, clinic: ClinicSettings | None,
                     source: str = "(campaign)") -> CampaignDefinition:
    """Validated spec → definition. Raises `DefinitionError` naming `source` and the step."""
    problems = []
    if clinic is not None and clinic.clinic_id != spec.clinic:
        problems.append(f"{source}: clinic: {spec.clinic!r} is not clinic {clinic.clinic_id!r}")
    if clinic is None and spec.time_zone is None:
        problems.append(f"{source}: clinic: unknown clinic {spec.clinic!r} "
                        "(apply its clinic file first, or give time_zone)")
    if spec.trigger not in TRIGGERS:
        problems.append(f"{source}: trigger: {spec.trigger!r} is not an event drip consumes "
                        f"({', '.join(sorted(TRIGGERS))})")
    if problems:
        raise DefinitionError(problems)
    time_zone = spec.time_zone or (clinic.time_zone if clinic else "UTC")
    locale = (spec.locale or (clinic.locale if clinic else "en")).replace("-", "_")
    steps: list[Step] = []
    pending: tuple[int, WaitSpec] | None = None
    for i, item in enumerate(spec.steps):
        if isinstance(item, WaitItem):
            if pending is not None:
                problems.append(f"{source}: steps[{i}]: two waits in a row; write them as one")
            pending = (i, item.wait)
            continue
        wait = _wait(pending[1]) if pending else Wait(PREVIOUS_STEP)
        pending = None
        step = _step(item, wait, spec.name)
        if isinstance(step, SendStep) and step.message is not None:
            try:
                check(step.message, locale=locale, time_zone=time_zone)
            except TemplateError as exc:
                problems.append(f"{source}: steps[{i}] (send {step.name!r}): {exc}")
        steps.append(step)
    if pending is not None:
        problems.append(f"{source}: steps[{pending[0]}]: a wait must be followed by a step")
    if problems:
        raise DefinitionError(problems)
    try:
        return CampaignDefinition(
            clinic_id=spec.clinic, name=spec.name, kind=spec.kind, time_zone=time_zone,
            trigger=spec.trigger, subject=spec.subject, steps=tuple(steps),
            stop_rules=frozenset(StopReason(r) for r in spec.stop_on),
            description=spec.description, deadline=spec.deadline, ends_at=spec.ends_at,
            locale=locale)
    except DomainError as exc:
        raise DefinitionError([f"{source}: {exc}"]) from None


def _step(item: SendSpec | BranchSpec | SplitSpec, wait: Wait, campaign: str) -> Step:
    if isinstance(item, SendSpec):
        return SendStep(item.send, item.channel, item.template or f"{campaign}/{item.send}",
                        wait, MessageTemplate(item.body, item.subject), item.next,
                        item.on_failure)
    if isinstance(item, BranchSpec):
        return BranchStep(item.branch, item.if_, item.then, item.else_, wait)
    return SplitStep(item.split, tuple(Variant(v.name, v.weight, v.goto)
                                       for v in item.variants), wait)


def _wait(w: WaitSpec) -> Wait:
    """A wait item → the domain's `Wait` (§2): sign from before/after, days as day shifts
    when a local time of day is given."""
    anchor = w.before or w.after or PREVIOUS_STEP
    anchor = ENROLLMENT if anchor == "enrollment" else anchor
    sign = -1 if w.before else 1
    if w.at is not None:
        return Wait(anchor, business_days=w.business_days, local_time=w.at,
                    day_offset=sign * (w.days + 7 * w.weeks))
    offset = timedelta(minutes=w.minutes, hours=w.hours, days=w.days, weeks=w.weeks)
    return Wait(anchor, sign * offset, w.business_days)
