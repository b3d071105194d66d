"""The CloudEvents 1.0 envelope every upstream message travels in (§9).

Kafka protocol binding, both content modes:
- structured: the value is the whole event as JSON (`content-type:
  application/cloudevents+json`, or no content type at all) — `{specversion, id, source,
  type, time, subject, clinicid, dataversion, data}`;
- binary: the attributes are `ce_*` headers (`ce_specversion`, `ce_id`, `ce_clinicid`...)
  and the value is the data alone, as JSON.
As the binding says, the `content-type` header decides: `application/cloudevents+json` is
structured even when `ce_*` headers came along; otherwise `ce_specversion` means binary.
The clinic is the extension attribute `clinicid` (extension names are lowercase letters
and digits only); structured mode also accepts `clinic_id`, deprecated. The Kafka key is
the patient id. `parse_cloudevent(value, headers, schemas)` returns a typed event or
raises `InvalidMessage` with a reason fit for the dead-letter topic.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

D = TypeVar("D", bound=BaseModel)
EARLIEST_YEAR, LATEST_YEAR = 1900, 2200
STRUCTURED = "application/cloudevents+json"

Id = Annotated[str, StringConstraints(min_length=1, max_length=256,
                                      pattern=r"^[^\x00-\x1f\x7f]+$")]
"""An opaque id: 1–256 characters, no control characters (bounded so that it fits any
index, and printable so that it is safe in logs and headers)."""


def _iso_text_or_datetime(value: object) -> object:
    if isinstance(value, int | float | bool):
        raise ValueError("must be an ISO-8601 time with a UTC offset, not a number")
    return value


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a UTC offset (ISO-8601 with Z or +hh:mm)")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp out of range") from None
    if not EARLIEST_YEAR <= utc.year <= LATEST_YEAR:
        raise ValueError(f"timestamp must lie between {EARLIEST_YEAR} and {LATEST_YEAR}")
    return utc


UtcDatetime = Annotated[datetime, BeforeValidator(_iso_text_or_datetime),
                        AfterValidator(_aware_utc)]
"""An ISO-8601 time with an offset, converted to UTC; between 1900 and 2200."""


class Contract(BaseModel):
    """Base of every wire schema: frozen, tolerant of fields it does not know."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Envelope(Contract, Generic[D]):
    """CloudEvents 1.0 attributes plus the extensions `clinicid` and `dataversion`."""

    specversion: Literal["1.0"] = Field("1.0", description="CloudEvents spec version")
    id: Id = Field(description="Unique id of this event, set by its source")
    source: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        description="URI-reference of the producing system")
    type: str = Field(min_length=1, max_length=256,
                      description="Event type, e.g. `appointment.booked`")
    dataversion: int = Field(1, description="Extension: version of the `data` schema")
    time: UtcDatetime = Field(description="When it happened (ISO-8601 with offset; UTC)")
    subject: Id = Field(description="The patient id: equal to `data.patient_id` and the key")
    clinic_id: Id = Field(validation_alias=AliasChoices("clinicid", "clinic_id"),
                          serialization_alias="clinicid",
                          description="Extension `clinicid`: the clinic it belongs to (§1); "
                                      "`clinic_id` is accepted in structured mode, deprecated")
    data: D = Field(description="Payload; its schema is given by (type, dataversion)")

    @model_validator(mode="after")
    def _subject_is_the_patient(self) -> Envelope[D]:
        patient = getattr(self.data, "patient_id", None)
        if patient is not None and patient != self.subject:
            raise ValueError("subject must equal data.patient_id")
        return self


class InvalidMessage(ValueError):
    """A message that cannot be accepted; `reason` is what the dead-letter topic records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Head(Contract):
    type: str
    dataversion: int = 1


def parse_cloudevent(value: bytes | None, headers: Sequence[tuple[str, bytes | None]],
                     schemas: Mapping[tuple[str, int], type[Envelope[Any]]]) -> Envelope[Any]:
    """Parse one Kafka record, in binary or structured mode, into the envelope registered
    for its (type, dataversion).

    Raises `InvalidMessage`: a tombstone, malformed JSON or headers, unknown type, unknown
    schema version, or a field that breaks its schema (the reason names it).
    """
    if value is None:
        raise InvalidMessage("malformed message: no value (a tombstone)")
    named = {k.lower(): v for k, v in headers}
    content_type = _text(named.get("content-type") or b"", "content-type")  # "": none
    if "ce_specversion" in named and not content_type.startswith(STRUCTURED):
        return _validate(_binary_document(value, named), schemas)
    if content_type and not content_type.startswith((STRUCTURED, "application/json")):
        raise InvalidMessage(f"unsupported content-type {content_type!r} without ce_ headers")
    try:
        document = json.loads(value)
    except ValueError as exc:
        raise InvalidMessage(f"malformed message: invalid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidMessage("malformed message: not a JSON object")
    return _validate(document, schemas)


def parse_envelope(raw: bytes, schemas: Mapping[tuple[str, int],
                                                type[Envelope[Any]]]) -> Envelope[Any]:
    """A structured-mode record's value (`parse_cloudevent` without headers)."""
    return parse_cloudevent(raw, (), schemas)


def _binary_document(value: bytes, headers: Mapping[str, bytes | None]) -> dict[str, Any]:
    content_type = _text(headers.get("content-type") or b"application/json", "content-type")
    if not content_type.startswith("application/json"):
        raise InvalidMessage(f"unsupported data content-type {content_type!r}")
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise InvalidMessage(f"malformed message: data is not JSON: {exc}") from None
    attributes = {name[3:]: _text(raw, name) for name, raw in headers.items()
                  if name.startswith("ce_") and name != "ce_data"}
    return {**attributes, "data": data}


def _text(raw: bytes | None, name: str) -> str:
    if raw is None:  # Kafka allows a header without a value
        raise InvalidMessage(f"malformed message: header {name} has no value")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidMessage(f"malformed message: header {name} is not UTF-8") from None


def _validate(document: dict[str, Any],
              schemas: Mapping[tuple[str, int], type[Envelope[Any]]]) -> Envelope[Any]:
    try:
        head = _Head.model_validate(document)
    except ValidationError as exc:
        raise InvalidMessage(f"malformed message: {_first_error(exc)}") from None
    schema = schemas.get((head.type, head.dataversion))
    if schema is None:
        if head.type in {t for t, _ in schemas}:
            raise InvalidMessage(f"unknown schema version {head.dataversion} of {head.type!r}")
        raise InvalidMessage(f"unknown event type {head.type[:100]!r}")
    try:
        return schema.model_validate(document)
    except ValidationError as exc:
        raise InvalidMessage(
            f"invalid {head.type} v{head.dataversion}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "message"
    return f"{where}: {err.get('msg', 'invalid')}"
