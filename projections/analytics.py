"""Analysts' views (§7): one PostgreSQL view per question, per clinic, over the event store
and the campaign-statistics tables; docs/read-models.md gives their columns and example SQL.

Views cost nothing when events are written: they read the stored domain events (plain
JSON in `drip_events.state`) and the `enrollments` / `campaigns` tables of
projections/campaign_stats.py. Times are `timestamptz` (UTC); `at` is when a thing happened
(event time), not when it was recorded.

- `domain_events(position, aggregate_id, version, event, state)`: the whole event log.
- `enrollment_events(position, clinic_id, patient_id, enrollment_id, campaign_id, campaign,
  version, event, at, step, reason, channel)`: every enrollment's history (patient timeline).
- `dispatches(clinic_id, campaign_id, campaign, enrollment_id, patient_id, variant, step,
  channel, sent_at, delivered_at, failed_at, bounced_at, opened_at, clicked_at)`: each sent
  message with its receipts.
- `bookings(clinic_id, patient_id, appointment_id, booked_at)`: the appointments drip saw
  booked (those that triggered an appointment campaign, and rebookings that stopped one).
- `attribution_14d`: dispatches with `booked_within_14d` (an appointment booked within 14
  days after the send); `attribution(cur, clinic, days)` takes any N.
- `campaign_summary`, `step_funnel`, `enrollment_progress`, `patient_timeline`: the
  questions an analyst asks first, per clinic (docs/read-models.md).
- `reengagement_roi(clinic_id, campaign_id, campaign, variant, enrolled, rebooked,
  rebook_rate)`: per campaign and A/B variant (the incentive), enrollments that ended in a
  booking.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import Cursor

from projections import campaign_stats
from projections.sql import rows

EVENTS_TABLE = "drip_events"

_AT = ("coalesce((d.state->'at'->>'_data_')::timestamptz,"
       " (d.state->'timestamp'->>'_data_')::timestamptz)")

VIEWS = f"""
CREATE OR REPLACE VIEW domain_events AS
SELECT e.notification_id AS position, e.originator_id AS aggregate_id,
       e.originator_version AS version, split_part(e.topic, ':', 2) AS event,
       convert_from(e.state, 'UTF8')::jsonb AS state
FROM {EVENTS_TABLE} e;

CREATE OR REPLACE VIEW enrollment_events AS
SELECT d.position, n.clinic_id, n.patient_id, n.enrollment_id, n.campaign_id,
       c.name AS campaign, d.version, split_part(d.event, '.', 2) AS event, {_AT} AS at,
       d.state->>'step' AS step, d.state->>'reason' AS reason, d.state->>'channel' AS channel
FROM enrollments n
JOIN campaigns c USING (campaign_id)
JOIN domain_events d ON d.aggregate_id = n.enrollment_id;

CREATE OR REPLACE VIEW dispatches AS
SELECT v.clinic_id, v.campaign_id, v.campaign, v.enrollment_id, v.patient_id, n.variant,
       v.step,
       max(v.channel) FILTER (WHERE v.event = 'MessageSent') AS channel,
       min(v.at) FILTER (WHERE v.event = 'MessageSent') AS sent_at,
       min(v.at) FILTER (WHERE v.event = 'MessageDelivered') AS delivered_at,
       min(v.at) FILTER (WHERE v.event = 'MessageFailed') AS failed_at,
       min(v.at) FILTER (WHERE v.event = 'MessageBounced') AS bounced_at,
       min(v.at) FILTER (WHERE v.event = 'MessageOpened') AS opened_at,
       min(v.at) FILTER (WHERE v.event = 'MessageClicked') AS clicked_at
FROM enrollment_events v JOIN enrollments n USING (enrollment_id)
WHERE v.event IN ('MessageSent', 'MessageDelivered', 'MessageFailed', 'MessageBounced',
                  'MessageOpened', 'MessageClicked')
GROUP BY 1, 2, 3, 4, 5, 6, 7
HAVING count(*) FILTER (WHERE v.event = 'MessageSent') > 0;

CREATE OR REPLACE VIEW bookings AS
SELECT clinic_id, patient_id, subject AS appointment_id, min(started_at) AS booked_at
FROM enrollments WHERE subject <> patient_id   -- an appointment campaign's subject
GROUP BY 1, 2, 3
UNION
SELECT v.clinic_id, v.patient_id, d.state->>'appointment_id', min(v.at)
FROM enrollment_events v JOIN domain_events d USING (position)
WHERE v.event = 'AppointmentBooked'
GROUP BY 1, 2, 3;

CREATE OR REPLACE VIEW attribution_14d AS
SELECT s.*, coalesce(h.booked, false) AS booked_within_14d
FROM dispatches s LEFT JOIN (
    SELECT d.enrollment_id, d.step, true AS booked
    FROM dispatches d JOIN bookings b ON b.clinic_id = d.clinic_id
     AND b.patient_id = d.patient_id AND b.booked_at > d.sent_at
     AND b.booked_at <= d.sent_at + interval '14 days'
    GROUP BY 1, 2) h USING (enrollment_id, step);

CREATE OR REPLACE VIEW campaign_summary AS
SELECT c.clinic_id, c.campaign_id, c.name AS campaign, c.kind,
       count(n.enrollment_id) FILTER (WHERE n.status <> 'ignored') AS enrolled,
       count(*) FILTER (WHERE n.status = 'active') AS active,
       count(*) FILTER (WHERE n.status = 'completed') AS completed,
       count(*) FILTER (WHERE n.status = 'stopped') AS stopped,
       count(*) FILTER (WHERE n.status = 'ignored') AS ignored
FROM campaigns c LEFT JOIN enrollments n USING (campaign_id)
GROUP BY 1, 2, 3, 4;

CREATE OR REPLACE VIEW step_funnel AS
SELECT clinic_id, campaign_id, campaign, step, coalesce(variant, '') AS variant, channel,
       count(*) AS sent, count(delivered_at) AS delivered, count(failed_at) AS failed,
       count(bounced_at) AS bounced, count(opened_at) AS opened, count(clicked_at) AS clicked
FROM dispatches GROUP BY 1, 2, 3, 4, 5, 6;

CREATE OR REPLACE VIEW enrollment_progress AS
SELECT n.clinic_id, n.enrollment_id, n.campaign_id, c.name AS campaign, n.patient_id,
       n.subject, n.status, n.stop_reason, n.steps_done,
       jsonb_array_length(c.step_names) AS total_steps,
       round(100.0 * n.steps_done / greatest(jsonb_array_length(c.step_names), 1))
           AS progress_pct,
       c.step_names->>n.next_step_index AS next_step, n.next_due_at, n.started_at,
       n.ended_at, n.variant
FROM enrollments n JOIN campaigns c USING (campaign_id);

CREATE OR REPLACE VIEW patient_timeline AS
SELECT clinic_id, patient_id, at, campaign, enrollment_id, event, step, channel, reason,
       position
FROM enrollment_events;

CREATE OR REPLACE VIEW reengagement_roi AS
SELECT n.clinic_id, n.campaign_id, c.name AS campaign, coalesce(n.variant, '') AS variant,
       count(*) AS enrolled,
       count(*) FILTER (WHERE n.stop_reason = 'appointment_booked') AS rebooked,
       round(count(*) FILTER (WHERE n.stop_reason = 'appointment_booked')::numeric
             / greatest(count(*), 1), 4) AS rebook_rate
FROM enrollments n JOIN campaigns c USING (campaign_id)
WHERE n.status <> 'ignored'
GROUP BY 1, 2, 3, 4;
"""

FUNNEL_METRICS = ("sent", "delivered", "failed", "bounced", "opened", "clicked")


def funnel(cur: Cursor, clinic_id: str, since: datetime | None = None,
           until: datetime | None = None) -> list[dict[str, Any]]:
    """§7 funnel of the clinic's messages sent in `[since, until)` (UTC), per campaign, step,
    variant and channel: sent, delivered, failed, bounced, opened, clicked, and the
    enrollments that responded or rebooked after that message (last touch: the last
    message sent before the enrollment stopped gets the credit)."""
    cur.execute(
        """
        WITH s AS MATERIALIZED (
            SELECT * FROM dispatches WHERE clinic_id = %(clinic)s),
        last AS (
            SELECT DISTINCT ON (s.enrollment_id) s.enrollment_id, s.step, n.stop_reason
            FROM s JOIN enrollments n USING (enrollment_id)
            WHERE n.stop_reason IN ('responded', 'appointment_booked')
              AND s.sent_at <= n.ended_at
            ORDER BY s.enrollment_id, s.sent_at DESC)
        SELECT s.campaign_id, s.campaign, s.step, coalesce(s.variant, '') AS variant,
               s.channel, count(*) AS sent, count(s.delivered_at), count(s.failed_at),
               count(s.bounced_at), count(s.opened_at), count(s.clicked_at),
               count(*) FILTER (WHERE l.stop_reason = 'responded') AS responded,
               count(*) FILTER (WHERE l.stop_reason = 'appointment_booked') AS rebooked
        FROM s LEFT JOIN last l ON l.enrollment_id = s.enrollment_id AND l.step = s.step
        WHERE (%(since)s::timestamptz IS NULL OR s.sent_at >= %(since)s)
          AND (%(until)s::timestamptz IS NULL OR s.sent_at < %(until)s)
        GROUP BY 1, 2, 3, 4, 5 ORDER BY 2, 3, 4, 5
        """, {"clinic": clinic_id, "since": since, "until": until})
    names = ("campaign_id", "campaign", "step", "variant", "channel", *FUNNEL_METRICS,
             "responded", "rebooked")
    return [dict(zip(names, r, strict=True)) for r in rows(cur)]


def campaign_totals(cur: Cursor, clinic_id: str, since: datetime | None = None,
                    until: datetime | None = None) -> list[dict[str, Any]]:
    """Per campaign of the clinic: enrollments started in `[since, until)` (UTC), how many
    are active, completed, ignored, and stopped by reason."""
    cur.execute(
        """
        SELECT c.campaign_id, c.name, c.kind, count(n.enrollment_id) AS enrolled,
               count(*) FILTER (WHERE n.status = 'active') AS active,
               count(*) FILTER (WHERE n.status = 'completed') AS completed,
               count(*) FILTER (WHERE n.status = 'ignored') AS ignored
        FROM campaigns c LEFT JOIN enrollments n ON n.campaign_id = c.campaign_id
          AND (%(since)s::timestamptz IS NULL OR n.started_at >= %(since)s)
          AND (%(until)s::timestamptz IS NULL OR n.started_at < %(until)s)
        WHERE c.clinic_id = %(clinic)s GROUP BY 1, 2, 3 ORDER BY 2
        """, {"clinic": clinic_id, "since": since, "until": until})
    out = {r[0]: {"campaign_id": r[0], "campaign": r[1], "kind": r[2], "enrolled": r[3],
                  "active": r[4], "completed": r[5], "ignored": r[6], "stopped": {}}
           for r in rows(cur)}
    cur.execute(
        """
        SELECT n.campaign_id, n.stop_reason, count(*) FROM enrollments n
        WHERE n.clinic_id = %(clinic)s AND n.status = 'stopped'
          AND (%(since)s::timestamptz IS NULL OR n.started_at >= %(since)s)
          AND (%(until)s::timestamptz IS NULL OR n.started_at < %(until)s)
        GROUP BY 1, 2 ORDER BY 1, 2
        """, {"clinic": clinic_id, "since": since, "until": until})
    for cid, reason, n in rows(cur):
        if cid in out:
            out[cid]["stopped"][reason] = n
    for c in out.values():
        c["enrolled"] -= c["ignored"]
    return list(out.values())


def attribution(cur: Cursor, clinic_id: str, days: int) -> list[dict[str, Any]]:
    """Conversion attribution (§7): per campaign, step and channel, messages sent and how
    many were followed by an appointment booked within `days` days (by the same patient)."""
    cur.execute(
        """
        WITH s AS MATERIALIZED (SELECT * FROM dispatches WHERE clinic_id = %(clinic)s),
        hit AS (
            SELECT s.enrollment_id, s.step FROM s JOIN bookings b
              ON b.clinic_id = %(clinic)s AND b.patient_id = s.patient_id
             AND b.booked_at > s.sent_at
             AND b.booked_at <= s.sent_at + make_interval(days => %(days)s)
            GROUP BY 1, 2)
        SELECT s.campaign_id, s.campaign, s.step, s.channel, count(*) AS sent,
               count(hit.step) AS booked
        FROM s LEFT JOIN hit USING (enrollment_id, step)
        GROUP BY 1, 2, 3, 4 ORDER BY 2, 3, 4
        """, {"clinic": clinic_id, "days": days})
    names = ("campaign_id", "campaign", "step", "channel", "sent", "booked")
    found = [dict(zip(names, r, strict=True)) for r in rows(cur)]
    for f in found:
        f["conversion"] = round(f["booked"] / f["sent"], 4) if f["sent"] else 0.0
    return found


def roi(cur: Cursor, clinic_id: str) -> list[dict[str, Any]]:
    """Re-engagement ROI (§7): per campaign and variant (its incentive), enrolled and
    rebooked; revenue is not known to drip (no booking carries a price) and is None."""
    cur.execute("SELECT campaign_id, campaign, variant, enrolled, rebooked, rebook_rate"
                " FROM reengagement_roi WHERE clinic_id = %s ORDER BY 2, 3", (clinic_id,))
    names = ("campaign_id", "campaign", "variant", "enrolled", "rebooked", "rebook_rate")
    return [{**dict(zip(names, r, strict=True)), "rebook_rate": float(r[5]), "revenue": None}
            for r in rows(cur)]


def timeline(cur: Cursor, clinic_id: str, *, patient_id: str | None = None,
             enrollment: UUID | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """A patient's (or one enrollment's) history across campaigns, in the order drip
    recorded it (the event log's)."""
    cur.execute(
        """
        SELECT position, enrollment_id, campaign_id, campaign, event, at, step, reason, channel
        FROM enrollment_events
        WHERE clinic_id = %(clinic)s
          AND (%(patient)s::text IS NULL OR patient_id = %(patient)s)
          AND (%(enrollment)s::uuid IS NULL OR enrollment_id = %(enrollment)s)
        ORDER BY position LIMIT %(limit)s
        """, {"clinic": clinic_id, "patient": patient_id, "enrollment": enrollment,
              "limit": limit})
    names = ("position", "enrollment_id", "campaign_id", "campaign", "event", "at", "step",
             "reason", "channel")
    return [dict(zip(names, r, strict=True)) for r in rows(cur)]


ENROLLMENT_COLUMNS = ("enrollment_id", "campaign_id", "campaign", "patient_id", "subject",
                      "status", "stop_reason", "steps_done", "total_steps", "next_step",
                      "next_due_at", "started_at", "ended_at", "variant")


def enrollments(cur: Cursor, clinic_id: str, *, campaign_id: UUID | None = None,
                patient_id: str | None = None, enrollment_id: UUID | None = None,
                status: str | None = None,
                stop_reason: str | None = None, due_before: datetime | None = None,
                after: UUID | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The clinic's enrollments with their progress (§3 "2/5 (40 %)"), filtered, ordered by
    id; `after` is the cursor (the last id of the previous page)."""
    cur.execute(
        """
        SELECT n.enrollment_id, n.campaign_id, c.name, n.patient_id, n.subject, n.status,
               n.stop_reason, n.steps_done, jsonb_array_length(c.step_names),
               c.step_names->>n.next_step_index, n.next_due_at, n.started_at, n.ended_at,
               n.variant
        FROM enrollments n JOIN campaigns c USING (campaign_id)
        WHERE n.clinic_id = %(clinic)s
          AND (%(campaign)s::uuid IS NULL OR n.campaign_id = %(campaign)s)
          AND (%(patient)s::text IS NULL OR n.patient_id = %(patient)s)
          AND (%(enrollment)s::uuid IS NULL OR n.enrollment_id = %(enrollment)s)
          AND (%(status)s::text IS NULL OR n.status = %(status)s)
          AND (%(reason)s::text IS NULL OR n.stop_reason = %(reason)s)
          AND (%(due)s::timestamptz IS NULL OR n.next_due_at < %(due)s)
          AND (%(after)s::uuid IS NULL OR n.enrollment_id > %(after)s)
        ORDER BY n.enrollment_id LIMIT %(limit)s
        """, {"clinic": clinic_id, "campaign": campaign_id, "patient": patient_id,
              "enrollment": enrollment_id, "status": status, "reason": stop_reason,
              "due": due_before, "after": after, "limit": limit})
    found = [dict(zip(ENROLLMENT_COLUMNS, r, strict=True)) for r in rows(cur)]
    for item in found:
        item["progress"] = campaign_stats.progress(item["steps_done"], item["total_steps"] or 0)
    return found
