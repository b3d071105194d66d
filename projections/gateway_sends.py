"""The gateways' ledger (§6 idempotency) and their receipts outbox.

`gateway_sends`: one row per idempotency key, claimed before the provider is called, so a
key is sent by one gateway at a time and never again once it is `sent` or `failed`. A
claim is a lease (`lease_until`): a gateway that died mid-send leaves the row `sending`,
and the key may be claimed again when the lease ran out (then the provider's own
idempotency — the `Idempotency-Key` header, the e-mail's Message-ID — is what prevents a
second delivery).

`gateway_receipts`: the receipts to publish (`DeliveryReceiptV1` as JSON), written in the
same transaction as the ledger row they follow, published by a relay (outbox).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import Cursor

from projections.sql import rows

DDL = """
CREATE TABLE IF NOT EXISTS gateway_sends (
    idempotency_key     text PRIMARY KEY,
    clinic_id           text NOT NULL,
    patient_id          text NOT NULL,
    enrollment_id       uuid NOT NULL,
    step                text NOT NULL,
    channel             text NOT NULL,
    state               text NOT NULL,
    attempts            int  NOT NULL DEFAULT 0,
    provider            text,
    provider_message_id text,
    error               text,
    lease_until         timestamptz NOT NULL,
    claimed_by          text NOT NULL DEFAULT '',
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS gateway_sends_provider ON gateway_sends (provider, provider_message_id);
CREATE TABLE IF NOT EXISTS gateway_receipts (
    id           bigserial PRIMARY KEY,
    patient_id   text  NOT NULL,
    receipt      jsonb NOT NULL,
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS gateway_receipts_unpublished ON gateway_receipts (id)
    WHERE published_at IS NULL;
CREATE TABLE IF NOT EXISTS gateway_budget (
    clinic_id text   NOT NULL,
    channel   text   NOT NULL,
    second    bigint NOT NULL,
    used      int    NOT NULL,
    PRIMARY KEY (clinic_id, channel)
);
"""
CHANNEL = "drip_receipts"
"""NOTIFY channel: a receipt was written (wakes the receipts relay)."""


@dataclass(frozen=True)
class Claim:
    idempotency_key: str
    clinic_id: str
    patient_id: str
    enrollment_id: UUID
    step: str
    channel: str


def claim(cur: Cursor, claims: Sequence[Claim], lease_seconds: float, by: str) -> set[str]:
    """Claim these keys for `lease_seconds` for gateway instance `by`; returns those it
    may send: new keys, and keys still `sending` whose lease ran out or that `by` itself
    claimed (its batch is coming again after a failure). Sent or failed keys never return."""
    if not claims:
        return set()
    cur.execute(
        "INSERT INTO gateway_sends AS g (idempotency_key, clinic_id, patient_id, enrollment_id,"
        " step, channel, state, lease_until, claimed_by) SELECT k, c, p, e, s, ch, 'sending',"
        " now() + make_interval(secs => %s), %s FROM unnest(%s::text[], %s::text[],"
        " %s::text[], %s::uuid[], %s::text[], %s::text[]) AS t(k, c, p, e, s, ch)"
        " ON CONFLICT (idempotency_key) DO UPDATE SET lease_until = EXCLUDED.lease_until,"
        " claimed_by = EXCLUDED.claimed_by, updated_at = now() WHERE g.state = 'sending'"
        " AND (g.lease_until < now() OR g.claimed_by = EXCLUDED.claimed_by)"
        " RETURNING idempotency_key",
        [lease_seconds, by, *[[getattr(c, f) for c in claims] for f in (
            "idempotency_key", "clinic_id", "patient_id", "enrollment_id", "step", "channel")]])
    return {r[0] for r in rows(cur)}


def finish(cur: Cursor, key: str, state: str, attempts: int, provider: str | None,
           provider_message_id: str | None, error: str | None,
           receipt: tuple[str, str] | None) -> None:
    """Record a key's outcome (`sent`, `failed`) and, in the same transaction, the receipt
    `(patient_id, json)` to publish."""
    cur.execute("UPDATE gateway_sends SET state = %s, attempts = %s, provider = %s,"
                " provider_message_id = %s, error = %s, updated_at = now()"
                " WHERE idempotency_key = %s",
                (state, attempts, provider, provider_message_id, error, key))
    if receipt is not None:
        add_receipt(cur, *receipt)


def add_receipt(cur: Cursor, patient_id: str, receipt: str) -> None:
    cur.execute("INSERT INTO gateway_receipts (patient_id, receipt) VALUES (%s, %s)",
                (patient_id, receipt))
    cur.execute(f"NOTIFY {CHANNEL}")


def by_provider_id(cur: Cursor, provider: str, provider_message_id: str) -> dict[str, Any] | None:
    """The ledger row of a provider's message id (a delivery callback names it)."""
    cur.execute("SELECT idempotency_key, clinic_id, patient_id, enrollment_id, step, channel,"
                " attempts FROM gateway_sends WHERE provider = %s AND provider_message_id = %s",
                (provider, provider_message_id))
    found = rows(cur)
    if not found:
        return None
    return dict(zip(("idempotency_key", "clinic_id", "patient_id", "enrollment_id", "step",
                     "channel", "attempts"), found[0], strict=True))


def claim_receipts(cur: Cursor, limit: int) -> list[tuple[int, str, str]]:
    """Unpublished receipts `(id, patient_id, json)`, oldest first, locked."""
    cur.execute("SELECT id, patient_id, receipt::text FROM gateway_receipts"
                " WHERE published_at IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (limit,))
    return [(i, p, r) for i, p, r in rows(cur)]


def mark_published(cur: Cursor, ids: Iterable[int]) -> None:
    cur.execute("UPDATE gateway_receipts SET published_at = now() WHERE id = ANY(%s)",
                (list(ids),))


def counts(cur: Cursor) -> dict[str, dict[str, int]]:
    """Ledger rows per channel and state (the demo's delivered counts)."""
    cur.execute("SELECT channel, state, count(*) FROM gateway_sends GROUP BY 1, 2")
    out: dict[str, dict[str, int]] = {}
    for channel, state, n in rows(cur):
        out.setdefault(channel, {})[state] = n
    return out


def receipt_counts(cur: Cursor) -> list[tuple[str, str, int]]:
    """`(channel, outcome, n)` of the receipts the gateways wrote."""
    cur.execute("SELECT receipt->>'channel', receipt->>'outcome', count(*) FROM gateway_receipts"
                " GROUP BY 1, 2 ORDER BY 1, 2")
    return rows(cur)


def reserve(cur: Cursor, clinic_id: str, channel: str, per_second: int, wanted: int,
            ) -> tuple[int, int]:
    """Take up to `wanted` messages of the clinic's budget for `channel` in the current
    second (a fixed window shared by every gateway instance, §5); returns (the second, how
    many were granted, possibly 0). The row is locked for the transaction, which commits
    without waiting for the disk: a budget lost in a crash only lets a second pass."""
    cur.execute("SET LOCAL synchronous_commit = off")
    cur.execute("SELECT extract(epoch FROM now())::bigint")
    (second,) = rows(cur)[0]
    cur.execute("INSERT INTO gateway_budget VALUES (%s, %s, %s, 0) ON CONFLICT DO NOTHING",
                (clinic_id, channel, second))
    cur.execute("SELECT second, used FROM gateway_budget WHERE clinic_id = %s AND channel = %s"
                " FOR UPDATE", (clinic_id, channel))
    last, used = rows(cur)[0]
    used = used if last == second else 0
    granted = max(0, min(wanted, per_second - used))
    cur.execute("UPDATE gateway_budget SET second = %s, used = %s WHERE clinic_id = %s"
                " AND channel = %s", (second, used + granted, clinic_id, channel))
    return int(second), granted
