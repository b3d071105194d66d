"""The CloudEvents-style envelope every upstream message travels in (§9).

Wire format: JSON object `{specversion, id, source, type, dataversion, time, subject,
clinic_id, data}`, Kafka key = patient id. `parse_upstream(raw)` returns a typed event or
raises `InvalidMessage` with a reason fit for the dead-letter topic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

D = TypeVar("D", bound=BaseModel)


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a UTC offset (ISO-8601 with Z or +hh:mm)")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_aware_utc)]


class Contract(BaseModel):
    """Base of every wire schema: frozen, tolerant of fields it does not know."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Envelope(Contract, Generic[D]):
    """CloudEvents 1.0 attributes plus drip's `clinic_id` and `dataversion`."""

    specversion: str = Field("1.0", description="CloudEvents spec version")
    id: str = Field(min_length=1, description="Unique id of this event, set by its source")
    source: str = Field(min_length=1, description="URI-reference of the producing system")
    type: str = Field(min_length=1, description="Event type, e.g. `appointment.booked`")
    dataversion: int = Field(1, description="Version of the `data` schema for this type")
    time: UtcDatetime = Field(description="When it happened (ISO-8601 with offset; UTC)")
    subject: str = Field(min_length=1, description="Patient id (also the Kafka key)")
    clinic_id: str = Field(min_length=1, description="Tenant: the clinic it belongs to (§1)")
    data: D = Field(description="Payload; its schema is given by (type, dataversion)")


class InvalidMessage(ValueError):
    """A message that cannot be accepted; `reason` is what the dead-letter topic records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Head(Contract):
    type: str
    dataversion: int = 1


def parse_envelope(raw: bytes, schemas: dict[tuple[str, int], type[Envelope[Any]]]) -> Envelope[Any]:
    """Parse `raw` JSON into the envelope registered for its (type, dataversion).

    Raises `InvalidMessage`: malformed JSON, unknown type, unknown schema version, or a
    field that breaks its schema (the reason names it).
    """
    try:
        head = _Head.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidMessage(f"malformed message: {_first_error(exc)}") from None
    schema = schemas.get((head.type, head.dataversion))
    if schema is None:
        known = sorted({t for t, _ in schemas})
        if head.type in known:
            raise InvalidMessage(f"unknown schema version {head.dataversion} of {head.type!r}")
        raise InvalidMessage(f"unknown event type {head.type!r}")
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidMessage(f"invalid {head.type} v{head.dataversion}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "message"
    return f"{where}: {err.get('msg', 'invalid')}"
