"""Campaign statistics and the enrollment list (§7), fed from the event log.

Tables (all counts are integers; times UTC):
- `campaigns(campaign_id, clinic_id, name, kind)`
- `enrollments(enrollment_id, campaign_id, clinic_id, patient_id, subject, status,
   stop_reason, steps_done, next_step_index, next_due_at, started_at, ended_at)`
- `campaign_counts(campaign_id, metric, key, n)`: metric `enrolled|completed|stopped|
   ignored|sent|skipped`, key = stop reason, ignore reason, or step name (`''` if none)
- `step_skips(campaign_id, step, reason, n)`
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from psycopg import Cursor

from domain.campaign import Campaign
from domain.enrollment import Enrollment, EnrollmentStatus
from domain.stop_rules import StopReason
from projections.sql import add_column, rows

DDL = """
CREATE TABLE IF NOT EXISTS campaigns (
    campaign_id uuid PRIMARY KEY, clinic_id text NOT NULL, name text NOT NULL,
    kind text NOT NULL, steps jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS enrollments (
    enrollment_id uuid PRIMARY KEY, campaign_id uuid NOT NULL, clinic_id text NOT NULL,
    patient_id text NOT NULL, subject text NOT NULL, status text NOT NULL,
    stop_reason text, steps_done int NOT NULL DEFAULT 0, next_step_index int,
    next_due_at timestamptz, started_at timestamptz NOT NULL, ended_at timestamptz
);

CREATE INDEX IF NOT EXISTS enrollments_patient ON enrollments (clinic_id, patient_id);
CREATE TABLE IF NOT EXISTS campaign_counts (
    campaign_id uuid NOT NULL, metric text NOT NULL, key text NOT NULL, n bigint NOT NULL,
    PRIMARY KEY (campaign_id, metric, key)
);
CREATE TABLE IF NOT EXISTS step_skips (
    campaign_id uuid NOT NULL, step text NOT NULL, reason text NOT NULL, n bigint NOT NULL,
    PRIMARY KEY (campaign_id, step, reason)
);
""" + add_column("enrollments", "variant", "text") + add_column("campaigns", "step_names", "jsonb")

_STOPS = frozenset(StopReason)
FUNNEL = ("delivered", "failed", "bounced", "opened", "clicked")
"""§7 funnel metrics after `sent`; a step has them in the report once any was counted."""
COLUMNS = ("enrollment_id", "campaign_id", "clinic_id", "patient_id", "subject", "status",
           "stop_reason", "steps_done", "next_step_index", "next_due_at", "started_at",
           "ended_at", "variant")
TYPES = ("uuid", "uuid", "text", "text", "text", "text", "text", "int", "int", "timestamptz",
         "timestamptz", "timestamptz", "text")


def apply(cur: Cursor, events: Sequence[Any]) -> None:
    """Fold one page of domain events into the tables (caller owns the transaction)."""
    page = _Page(cur)
    page.prefetch({ev.originator_id for ev in events if isinstance(ev, Enrollment.Event)})
    for ev in events:
        handler = _HANDLERS.get(type(ev))
        if handler is not None:
            handler(page, ev)
    page.write()


class _Page:
    def __init__(self, cur: Cursor) -> None:
        self.cur = cur
        self.rows: dict[UUID, dict[str, Any]] = {}
        self.counts: Counter[tuple[UUID, str, str]] = Counter()
        self.skips: Counter[tuple[UUID, str, str]] = Counter()
        self.campaigns: list[tuple] = []

    def prefetch(self, ids: set[UUID]) -> None:
        """Load the rows of a page's enrollments with one query."""
        self.cur.execute(f"SELECT {', '.join(COLUMNS)} FROM enrollments"
                         " WHERE enrollment_id = ANY(%s)", (list(ids),))
        for found in rows(self.cur):
            self.rows[found[0]] = dict(zip(COLUMNS, found, strict=True))

    def row(self, eid: UUID) -> dict[str, Any]:
        if eid not in self.rows:
            self.prefetch({eid})
        return self.rows[eid]

    def write(self) -> None:
        if self.campaigns:
            self.cur.executemany(
                "INSERT INTO campaigns (campaign_id, clinic_id, name, kind, steps, step_names)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (campaign_id)"
                " DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind,"
                " steps = EXCLUDED.steps, step_names = EXCLUDED.step_names",
                [(c[0], c[1], c[2], c[3], json.dumps(c[4]), json.dumps(c[5]))
                 for c in self.campaigns])
        if self.rows:
            cols = ", ".join(COLUMNS)
            updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[5:])
            arrays = ", ".join(f"%s::{t}[]" for t in TYPES)
            self.cur.execute(
                f"INSERT INTO enrollments ({cols}) SELECT * FROM unnest({arrays})"
                f" ON CONFLICT (enrollment_id) DO UPDATE SET {updates}",
                [[r[c] for r in self.rows.values()] for c in COLUMNS])
        if self.counts:
            self.cur.executemany(
                "INSERT INTO campaign_counts VALUES (%s, %s, %s, %s) ON CONFLICT"
                " (campaign_id, metric, key) DO UPDATE SET n = campaign_counts.n + EXCLUDED.n",
                [(*k, n) for k, n in sorted(self.counts.items())])
        if self.skips:
            self.cur.executemany(
                "INSERT INTO step_skips VALUES (%s, %s, %s, %s) ON CONFLICT"
                " (campaign_id, step, reason) DO UPDATE SET n = step_skips.n + EXCLUDED.n",
                [(*k, n) for k, n in sorted(self.skips.items())])


def _campaign_defined(page: _Page, ev: Any) -> None:
    """Defined or Revised: the report's step rows are the latest version's send steps."""
    d = ev.definition
    page.campaigns.append((ev.originator_id, d["clinic_id"], d["name"], d["kind"],
                           [s["name"] for s in d["steps"] if s.get("type", "send") == "send"],
                           [s["name"] for s in d["steps"]]))


def _created(page: _Page, ev: Any, status: str) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(enrollment_id=ev.originator_id, campaign_id=ev.campaign_id,
               clinic_id=ev.clinic_id, patient_id=ev.patient_id, subject=ev.subject,
               status=str(status), steps_done=0, started_at=ev.at)
    page.rows[ev.originator_id] = row
    return row


def _enrolled(page: _Page, ev: Any) -> None:
    _created(page, ev, EnrollmentStatus.ACTIVE)
    page.counts[(ev.campaign_id, "enrolled", "")] += 1


def _ignored(page: _Page, ev: Any) -> None:
    row = _created(page, ev, EnrollmentStatus.IGNORED)
    row.update(stop_reason=ev.reason, ended_at=ev.at)
    page.counts[(ev.campaign_id, "ignored", ev.reason)] += 1


def _scheduled(page: _Page, ev: Any) -> None:
    page.row(ev.originator_id).update(next_step_index=ev.index, next_due_at=ev.due_at)


def _sent(page: _Page, ev: Any) -> None:
    row = page.row(ev.originator_id)
    row.update(steps_done=ev.index + 1, next_step_index=None, next_due_at=None)
    page.counts[(row["campaign_id"], "sent", ev.step)] += 1
    if row["variant"]:
        page.counts[(row["campaign_id"], "variant_sent", f"{row['variant']}|{ev.step}")] += 1


def _variant(page: _Page, ev: Any) -> None:
    """A/B/n: the assignment, and the variant the enrollment's later sends count for."""
    row = page.row(ev.originator_id)
    label = f"{ev.step}={ev.variant}"
    row.update(steps_done=ev.index + 1, variant=label)
    page.counts[(row["campaign_id"], "variant", label)] += 1


def _branch(page: _Page, ev: Any) -> None:
    row = page.row(ev.originator_id)
    row.update(steps_done=ev.index + 1)
    page.counts[(row["campaign_id"], "branch", f"{ev.step}={'then' if ev.taken else 'else'}")] += 1


def _receipt(outcome: str) -> Callable[[_Page, Any], None]:
    """§6/§7 funnel: a step's delivered, failed, bounced, opened or clicked messages."""
    def count(page: _Page, ev: Any) -> None:
        page.counts[(page.row(ev.originator_id)["campaign_id"], outcome, ev.step)] += 1
    return count


def _deferred(page: _Page, ev: Any) -> None:
    page.counts[(page.row(ev.originator_id)["campaign_id"], "deferred", ev.step)] += 1


def _skipped(page: _Page, ev: Any) -> None:
    """A step skipped; a stop's skips (no due time, a stop reason) do not advance progress."""
    row = page.row(ev.originator_id)
    row.update(next_step_index=None, next_due_at=None)
    if ev.due_at is not None or ev.reason not in _STOPS:
        row.update(steps_done=ev.index + 1)
    page.counts[(row["campaign_id"], "skipped", ev.step)] += 1
    page.skips[(row["campaign_id"], ev.step, ev.reason)] += 1


def _ended(page: _Page, ev: Any, status: str, reason: str | None) -> None:
    row = page.row(ev.originator_id)
    row.update(status=str(status), stop_reason=reason, ended_at=ev.at, next_step_index=None,
               next_due_at=None)
    page.counts[(row["campaign_id"], str(status), reason or "")] += 1


_HANDLERS: dict[type, Callable[[_Page, Any], None]] = {
    Campaign.Defined: _campaign_defined,
    Campaign.Revised: _campaign_defined,
    Enrollment.VariantAssigned: _variant,
    Enrollment.BranchTaken: _branch,
    Enrollment.StepDeferred: _deferred,
    Enrollment.MessageDelivered: _receipt("delivered"),
    Enrollment.MessageFailed: _receipt("failed"),
    Enrollment.MessageBounced: _receipt("bounced"),
    Enrollment.MessageOpened: _receipt("opened"),
    Enrollment.MessageClicked: _receipt("clicked"),
    Enrollment.Enrolled: _enrolled,
    Enrollment.Ignored: _ignored,
    Enrollment.StepScheduled: _scheduled,
    Enrollment.MessageSent: _sent,
    Enrollment.StepSkipped: _skipped,
    Enrollment.Stopped: lambda page, ev: _ended(page, ev, EnrollmentStatus.STOPPED, ev.reason),
    Enrollment.Completed: lambda page, ev: _ended(page, ev, EnrollmentStatus.COMPLETED, None),
}


def progress(steps_done: int, total: int) -> str:
    """§3 progress: `"2/5 (40 %)"` — steps done (sent, skipped or decided) of the campaign's."""
    return f"{steps_done}/{total} ({round(100 * steps_done / total) if total else 100} %)"


def enrollment_progress(cur: Cursor, enrollment_id: UUID) -> str | None:
    """One enrollment's progress (§3), None when it is unknown."""
    cur.execute("SELECT e.steps_done, jsonb_array_length(coalesce(c.step_names, c.steps))"
                " FROM enrollments e"
                " JOIN campaigns c USING (campaign_id) WHERE e.enrollment_id = %s",
                (enrollment_id,))
    found = rows(cur)
    return progress(*found[0]) if found else None


def clinics(cur: Cursor) -> list[str]:
    """The clinics that have campaigns, in order."""
    cur.execute("SELECT DISTINCT clinic_id FROM campaigns ORDER BY 1")
    return [r[0] for r in rows(cur)]


def report(cur: Cursor, clinic_id: str | None = None) -> dict[str, Any]:
    """The `drip report --clinic C --json` shape, read from the tables only: the campaigns
    of `clinic_id` (all clinics when None: only meaningful with one clinic, as campaigns are
    keyed by name).

    `{"campaigns": {name: {"enrolled", "completed", "stopped": {reason: n},
      "steps": {step: {"sent", "skipped"}}}}, "ignored": {reason: n}}`; a step with
    delivery receipts also has `"delivered"`, `"failed"`, `"bounced"`, `"opened"`,
    `"clicked"` (the §7 funnel, those counted so far); a campaign with
    splits, branches or held steps also has `"variants": {split: {variant: {"assigned",
    "sent": {step: n}}}}`, `"branches": {step: {"then"|"else": n}}`, `"deferred": {step: n}`.
    """
    cur.execute("SELECT campaign_id, name, steps FROM campaigns"
                " WHERE %(clinic)s::text IS NULL OR clinic_id = %(clinic)s ORDER BY name",
                {"clinic": clinic_id})
    campaigns = {cid: (name, steps) for cid, name, steps in rows(cur)}
    out: dict[str, Any] = {"campaigns": {}, "ignored": {}}
    for name, steps in campaigns.values():
        out["campaigns"][name] = {"enrolled": 0, "completed": 0, "stopped": {},
                                  "steps": {s: {"sent": 0, "skipped": 0} for s in steps}}
    cur.execute("SELECT campaign_id, metric, key, n FROM campaign_counts"
                " WHERE campaign_id = ANY(%s) ORDER BY 1, 2, 3", (list(campaigns),))
    for cid, metric, key, n in rows(cur):
        c = out["campaigns"][campaigns[cid][0]]
        if metric in ("enrolled", "completed"):
            c[metric] += n
        elif metric == "stopped":
            c["stopped"][key] = n
        elif metric in ("sent", "skipped"):
            c["steps"].setdefault(key, {"sent": 0, "skipped": 0})[metric] += n
        elif metric == "ignored":
            out["ignored"][key] = out["ignored"].get(key, 0) + n
        elif metric == "variant":
            split, variant = key.split("=", 1)
            v = c.setdefault("variants", {}).setdefault(split, {}).setdefault(
                variant, {"assigned": 0, "sent": {}})
            v["assigned"] = n
        elif metric == "variant_sent":
            label, step = key.split("|", 1)
            split, variant = label.split("=", 1)
            c.setdefault("variants", {}).setdefault(split, {}).setdefault(
                variant, {"assigned": 0, "sent": {}})["sent"][step] = n
        elif metric == "branch":
            step, outcome = key.split("=", 1)
            c.setdefault("branches", {}).setdefault(step, {})[outcome] = n
        elif metric == "deferred":
            c.setdefault("deferred", {})[key] = n
        elif metric in FUNNEL:
            c["steps"].setdefault(key, {"sent": 0, "skipped": 0})[metric] = n
    return out
