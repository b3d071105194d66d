"""What a consumer hands a use case: one Kafka record, its bytes, and what parsing made of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

M = TypeVar("M")
Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class ConsumedRecord(Generic[M]):
    """The record at `topic[partition]@offset`, as received (`key`, `value`, `headers`).

    Exactly one of `message` (the parsed contract, of type `M`) and `error` (why it was
    refused, the dead letter's reason) is set.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    message: M | None = None
    error: str | None = None
