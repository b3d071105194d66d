"""API keys (§1 tenancy, the HTTP API): one or more per clinic, each with a role, stored
as a SHA-256 digest of its secret only (the secret is shown once, at creation).

A key reads `drip_<key id>_<secret>`: the key id finds the row, the secret's digest is
compared in constant time. Roles: `admin` (every call, mutations included) and `analyst`
(reads only). Credentials, not a read model: written by `drip clinic key create`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from psycopg import Cursor

from projections.sql import rows

DDL = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id     text PRIMARY KEY,
    clinic_id  text NOT NULL,
    role       text NOT NULL CHECK (role IN ('admin', 'analyst')),
    digest     text NOT NULL,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);
"""

ROLES = ("admin", "analyst")


@dataclass(frozen=True)
class Principal:
    """Who calls: the clinic the key belongs to and its role."""

    key_id: str
    clinic_id: str
    role: str

    @property
    def can_write(self) -> bool:
        return self.role == "admin"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(cur: Cursor, clinic_id: str, role: str, at: datetime) -> str:
    """A new key for `clinic_id` with `role`; returns the full key (never stored).
    Raises `ValueError` for an unknown role."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    cur.execute(DDL)
    cur.execute("INSERT INTO api_keys VALUES (%s, %s, %s, %s, %s, NULL)",
                (key_id, clinic_id, role, _digest(secret), at))
    return f"drip_{key_id}_{secret}"


def authenticate(cur: Cursor, key: str) -> Principal | None:
    """The principal of a valid, unrevoked key; None for anything else."""
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != "drip" or not key_id or not secret:
        return None
    cur.execute("SELECT clinic_id, role, digest FROM api_keys"
                " WHERE key_id = %s AND revoked_at IS NULL", (key_id,))
    found = rows(cur)
    if not found or not hmac.compare_digest(found[0][2], _digest(secret)):
        return None
    return Principal(key_id, found[0][0], found[0][1])


def revoke(cur: Cursor, key_id: str, at: datetime) -> bool:
    cur.execute("UPDATE api_keys SET revoked_at = %s WHERE key_id = %s AND revoked_at IS NULL",
                (at, key_id))
    return cur.rowcount == 1
