"""Message templates of `send` steps (§2 "send: channel, template (subject + body with merge
fields such as `{{ patient.first_name }}`, `{{ appointment.starts_at | local_time }}`...)").

Templates are Jinja2 text (no HTML escaping: SMS and plain text) rendered in a sandbox that
refuses unknown merge fields (`StrictUndefined`) and unsafe attribute access. `MERGE_FIELDS`
documents every field a template may use, as a sample context; `check` renders against it
when a campaign is applied, so a bad template is refused then, not when a patient is messaged.

Filters convert an aware `datetime` to the clinic's zone (IANA, `zoneinfo`) and format it
with Babel in the clinic's locale (`pt_BR`, `pt-BR`, `en`...):
`local_date(format="medium")`, `local_time(format="short")`, `local_datetime(format="medium")`
(Babel's `short|medium|long|full` or a CLDR pattern such as `"HH:mm"`), `weekday` (full local
name) and `money(currency="BRL")` (an amount in that currency's units, e.g. 180.50 BRL).

Pure: no I/O. Every refusal is a `TemplateError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from types import MappingProxyType, TracebackType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_time
from babel.numbers import format_currency
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from domain.errors import DomainError

SUBJECT = "subject"
BODY = "body"
_TEMPLATE_FILE = "<template>"  # the file name Jinja gives a template compiled from a string


class TemplateError(DomainError):
    """A template that cannot render: syntax error, unknown merge field, sandbox refusal or
    a filter given the wrong value (e.g. a naive datetime).

    `str()` names the part and the field or line: `"body: unknown merge field: 'dict object'
    has no attribute 'middle_name' (line 1)"`, `"subject line 1: unexpected '}'"`. `part` is
    `"subject"`, `"body"`, or None (not about one part: an unknown locale or zone, a malformed
    template dict); `line` is the template line when known.
    """

    def __init__(self, message: str, *, part: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.part = part
        self.line = line


@dataclass(frozen=True)
class MessageTemplate:
    """The text of a `send` step: `body` always, `subject` for e-mail only (§2)."""

    body: str
    subject: str | None = None

    def to_dict(self) -> dict[str, str]:
        """`{"body": ..., "subject": ...}`; the `subject` key only when set."""
        out = {BODY: self.body}
        if self.subject is not None:
            out[SUBJECT] = self.subject
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> MessageTemplate:
        """The inverse of `to_dict`. Raises `TemplateError` when `body` is missing or not a
        string, `subject` is neither a string nor absent/None, or another key is present."""
        unknown = sorted(set(data) - {BODY, SUBJECT})
        if unknown:
            raise TemplateError(f"unknown template keys: {', '.join(unknown)}")
        body, subject = data.get(BODY), data.get(SUBJECT)
        if not isinstance(body, str):
            raise TemplateError(f"body: must be a string, got {type(body).__name__}", part=BODY)
        if subject is not None and not isinstance(subject, str):
            raise TemplateError(f"subject: must be a string, got {type(subject).__name__}", part=SUBJECT)
        return cls(body=body, subject=subject)


@dataclass(frozen=True)
class RenderedMessage:
    """A rendered template: `body` as is, `subject` on one line (line breaks become spaces,
    so a merge field cannot inject an e-mail header), None when the template has none."""

    body: str
    subject: str | None


MERGE_FIELDS: Mapping[str, object] = MappingProxyType({
    "patient": {"id": "pat-000123", "first_name": "Ana", "last_name": "Souza", "language": "pt-BR"},
    "appointment": {
        "id": "apt-004567",
        "starts_at": datetime(2027, 1, 5, 13, 30, tzinfo=UTC),  # aware, UTC
        "location": "Unidade Paulista, sala 3",
    },
    "benefits": {"remaining": Decimal("180.50"), "expires_on": date(2027, 3, 31), "currency": "BRL"},
    "clinic": {
        "id": "clinic-sp-01",
        "name": "Clínica Sorriso",
        "phone": "+55 11 3000-0000",
        "time_zone": "America/Sao_Paulo",
        "language": "pt-BR",
        "booking_url": "https://sorriso.example/agendar",
    },
    "campaign": {"name": "appointment-reminders", "step": "reminder-48h"},
    "enrollment": {
        "id": "0b5e6f52-7d43-5a8e-9c1d-2f3a4b5c6d7e",
        "progress": "2/5 (40 %)",
        "variant": "A",
        "incentive_code": "SORRISO10",
    },
    "unsubscribe_url": "https://drip.example/u/0b5e6f52",
})
"""Every merge field a template may use, with sample values (nested plain dicts, so both
`patient.first_name` and `patient['first_name']` work). Datetimes are aware (UTC), dates are
`date`, `benefits.remaining` is a `Decimal` amount in `benefits.currency` (ISO 4217)."""


def check(template: MessageTemplate, *, locale: str, time_zone: str) -> None:
    """Render `template` against the complete sample context (`MERGE_FIELDS`) in `locale` and
    `time_zone` (IANA), and look for unknown merge fields in branches the sample does not
    take (`{% if enrollment.variant == 'B' %}`). Raises `TemplateError` when it does not parse,
    uses a field that does not exist (even behind `is defined` or `| default`: every field it
    reads must be in `MERGE_FIELDS`), or fails to render; this runs when a campaign is applied."""
    _render(template, MERGE_FIELDS, locale, time_zone, against_sample=True)


def render(template: MessageTemplate, context: Mapping[str, object], *, locale: str,
           time_zone: str) -> RenderedMessage:
    """Render `template` with `context` (shaped like `MERGE_FIELDS`; datetimes aware) in the
    clinic's `locale` and `time_zone`. Raises `TemplateError` on a syntax error, an undefined
    field, a sandbox refusal, a bad filter value, or an unknown locale or zone."""
    return _render(template, context, locale, time_zone, against_sample=False)


def _render(template: MessageTemplate, context: Mapping[str, object], locale: str, time_zone: str, *,
            against_sample: bool) -> RenderedMessage:
    locale = _locale_name(locale)
    subject = None
    if template.subject is not None:
        text = _render_part(SUBJECT, template.subject, context, locale, time_zone, against_sample)
        subject = " ".join(line.strip() for line in text.splitlines() if line.strip())
    body = _render_part(BODY, template.body, context, locale, time_zone, against_sample)
    return RenderedMessage(body=body, subject=subject)


def _render_part(part: str, source: str, context: Mapping[str, object], locale: str, time_zone: str,
                 against_sample: bool) -> str:
    try:
        compiled = _compile(source, locale, time_zone)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{part} line {exc.lineno}: {exc.message}", part=part, line=exc.lineno) from exc
    try:
        text = compiled.template.render(context)
    except UndefinedError as exc:
        raise _refusal(part, f"unknown merge field: {exc.message}", exc) from exc
    except SecurityError as exc:
        raise _refusal(part, f"refused by the sandbox: {exc.message}", exc) from exc
    except jinja2.TemplateError as exc:
        raise _refusal(part, f"cannot render: {exc.message}", exc) from exc
    except TemplateError as exc:  # raised by a filter, which does not know the part
        raise _refusal(part, str(exc), exc) from exc
    except (TypeError, ValueError, ArithmeticError) as exc:  # e.g. `{{ patient.first_name + 1 }}`
        raise _refusal(part, f"cannot render: {exc}", exc) from exc
    if against_sample and compiled.unknown_fields:
        field, line = compiled.unknown_fields[0]
        raise TemplateError(f"{part}: unknown merge field: {field!r} (line {line})", part=part, line=line)
    return text


def _refusal(part: str, reason: str, exc: BaseException) -> TemplateError:
    line = _template_line(exc.__traceback__)
    where = "" if line is None else f" (line {line})"
    return TemplateError(f"{part}: {reason}{where}", part=part, line=line)


def _template_line(tb: TracebackType | None) -> int | None:
    """The innermost template line of a traceback Jinja rewrote to point into the template."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILE:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


@lru_cache(maxsize=64)
def _locale_name(locale: str) -> str:
    try:
        return str(Locale.parse(locale.replace("-", "_")))
    except (UnknownLocaleError, ValueError, TypeError) as exc:
        raise TemplateError(f"unknown locale {locale!r}") from exc


@dataclass(frozen=True)
class _Compiled:
    template: jinja2.Template
    unknown_fields: tuple[tuple[str, int], ...]  # (field, line): not in MERGE_FIELDS, in source order


@lru_cache(maxsize=4096)
def _compile(source: str, locale: str, time_zone: str) -> _Compiled:
    """Parse, refuse unknown filters and tests anywhere (Jinja would only notice them in a
    branch that runs), note the unknown merge fields, and compile."""
    env = _environment(locale, time_zone)
    tree = env.parse(source)
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        kind, known = ("filter", env.filters) if isinstance(node, nodes.Filter) else ("test", env.tests)
        if node.name not in known:
            raise TemplateSyntaxError(f"No {kind} named {node.name!r}.", node.lineno)
    return _Compiled(env.from_string(tree), _unknown_fields(tree, env))


def _unknown_fields(tree: nodes.Template, env: jinja2.Environment) -> tuple[tuple[str, int], ...]:
    """Names the template reads without defining that are neither merge fields nor Jinja
    globals, and `a.b` / `a['b']` paths under a merge field that `MERGE_FIELDS` lacks."""
    undeclared = meta.find_undeclared_variables(tree)
    unknown: list[tuple[str, int]] = []
    for name in tree.find_all(nodes.Name):
        if name.ctx == "load" and name.name in undeclared and name.name not in MERGE_FIELDS \
                and name.name not in env.globals:
            unknown.append((name.name, name.lineno))
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        path = _path(node)
        if path is not None and path[0] in undeclared and path[0] in MERGE_FIELDS:
            missing = _missing(path)
            if missing is not None:
                unknown.append((missing, node.lineno))
    return tuple(sorted(dict.fromkeys(unknown), key=lambda item: item[1]))


def _path(node: nodes.Node) -> list[str] | None:
    """`["patient", "first_name"]` for `patient.first_name` or `patient['first_name']`."""
    keys: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            keys.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and isinstance(node.arg.value, str):
            keys.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            return [node.name, *reversed(keys)]
        else:
            return None


def _missing(path: list[str]) -> str | None:
    """The first prefix of `path` that `MERGE_FIELDS` lacks, dotted; None when it has it (past a
    value that is not a mapping, such as a datetime, the path is not followed)."""
    value: object = MERGE_FIELDS
    for depth, key in enumerate(path):
        if not isinstance(value, Mapping):
            return None
        if key in value:
            value = value[key]
        elif not hasattr(value, key):  # a mapping method such as `items` is not a field
            return ".".join(path[:depth + 1])
        else:
            return None
    return None


@lru_cache(maxsize=64)
def _environment(locale: str, time_zone: str) -> ImmutableSandboxedEnvironment:
    try:
        zone = ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise TemplateError(f"unknown time zone {time_zone!r}") from exc
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.filters.update(_filters(Locale.parse(locale), zone))
    return env


def _filters(locale: Locale, zone: ZoneInfo) -> dict[str, Callable[..., str]]:
    def local_date(value: object, format: str = "medium") -> str:
        day = _local_day(value, zone, "local_date")
        return _babel("local_date", format, lambda: format_date(day, format, locale=locale))

    def local_time(value: object, format: str = "short") -> str:
        at = _local_moment(value, zone, "local_time")
        return _babel("local_time", format, lambda: format_time(at, format, tzinfo=zone, locale=locale))

    def local_datetime(value: object, format: str = "medium") -> str:
        at = _local_moment(value, zone, "local_datetime")
        return _babel("local_datetime", format,
                      lambda: format_datetime(at, format, tzinfo=zone, locale=locale))

    def weekday(value: object) -> str:
        return format_date(_local_day(value, zone, "weekday"), "EEEE", locale=locale)

    def money(value: object, currency: str = "BRL") -> str:
        _fail_if_undefined(value)
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise TemplateError(f"money needs a number, got {type(value).__name__}")
        return _babel("money", currency, lambda: format_currency(value, currency, locale=locale))

    return {"local_date": local_date, "local_time": local_time, "local_datetime": local_datetime,
            "weekday": weekday, "money": money}


def _local_moment(value: object, zone: ZoneInfo, name: str) -> datetime:
    """An aware datetime `value`, converted to `zone`."""
    _fail_if_undefined(value)
    if not isinstance(value, datetime):
        raise TemplateError(f"{name} needs a timezone-aware datetime, got {type(value).__name__}")
    if value.utcoffset() is None:
        raise TemplateError(f"{name} needs a timezone-aware datetime, got naive {value.isoformat()}")
    return value.astimezone(zone)


def _local_day(value: object, zone: ZoneInfo, name: str) -> date:
    """The local date of an aware datetime `value` in `zone`, or a `date` as is."""
    _fail_if_undefined(value)
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, datetime):
        return _local_moment(value, zone, name).date()
    raise TemplateError(f"{name} needs a date or a timezone-aware datetime, got {type(value).__name__}")


def _fail_if_undefined(value: object) -> None:
    """Raise the `UndefinedError` naming the missing field when a filter is given one."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined refuses, naming the field
        raise TemplateError("a filter was given an undefined value")


def _babel(name: str, argument: object, call: Callable[[], str]) -> str:
    """`call()`, with Babel's refusal of a bad format or currency `argument` as a TemplateError."""
    if not isinstance(argument, str):
        raise TemplateError(f"{name}: expected a string argument, got {type(argument).__name__}")
    try:
        return call()
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TemplateError(f"{name}: cannot format with {argument!r}: {exc}") from exc
