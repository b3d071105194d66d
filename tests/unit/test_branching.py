"""Branches, A/B splits, held steps, deadlines and migrations on the Enrollment aggregate
(§2 branch/split/pause/versions, §4 deadline_passed): every decision is an event."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from domain.campaign import (
    BranchStep,
    Campaign,
    CampaignDefinition,
    CampaignStatus,
    SendStep,
    SplitStep,
    Variant,
)
from domain.enrollment import Enrollment
from domain.errors import InvalidCampaign
from domain.schedule import PREVIOUS_STEP, Wait
from domain.stop_rules import StopReason
from tests.gallery import campaign

T0 = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
H, D = timedelta(hours=1), timedelta(days=1)


def definition(*steps: SendStep | BranchStep | SplitStep, **kw: object) -> CampaignDefinition:
    base: dict[str, object] = dict(clinic_id="c", name="flow", kind="follow_up", time_zone="UTC",
                                   trigger="appointment.missed", subject="appointment")
    return CampaignDefinition(**{**base, **kw}, steps=steps)  # type: ignore[arg-type]


HOURLY = Wait(PREVIOUS_STEP, H)


def send(name: str, wait: Wait = HOURLY, **kw: object) -> SendStep:
    return SendStep(name, "sms", f"t/{name}", wait, **kw)  # type: ignore[arg-type]


def enroll(c: CampaignDefinition, subject: str = "a1", **kw: object) -> Enrollment:
    return Enrollment.enroll(c, patient_id="p1", subject=subject, at=T0, cause="ev",
                             dates={}, **kw)  # type: ignore[arg-type]


def history(e: Enrollment) -> list[tuple[str, str]]:
    out = []
    for ev in e.collect_events():
        detail = next((str(getattr(ev, k)) for k in ("variant", "target", "step", "reason")
                       if hasattr(ev, k)), "")
        out.append((type(ev).__name__, detail))
    return out


REPLIED = BranchStep("replied?", {"replied": True}, "thanks", "nudge", Wait(PREVIOUS_STEP, D))
FLOW = definition(send("hello"), REPLIED, send("nudge", next="end"), send("thanks"))


class TestBranch:
    def test_the_condition_picks_the_next_step_when_the_branch_falls_due(self) -> None:
        silent = enroll(FLOW)
        silent.catch_up(FLOW, T0 + 10 * D)
        assert [h for h in history(silent) if h[0] in ("MessageSent", "BranchTaken")] == [
            ("MessageSent", "hello"), ("BranchTaken", "nudge"), ("MessageSent", "nudge")]
        assert silent.status == "completed"

        replied = enroll(FLOW, "a2")
        replied.catch_up(FLOW, T0 + 2 * H)
        replied.record_reply(FLOW, "sms", T0 + 2 * H, "reply")  # no stop rule: goes on
        replied.catch_up(FLOW, T0 + 10 * D)
        sent = [d for k, d in history(replied) if k == "MessageSent"]
        assert sent == ["hello", "thanks"]

    def test_a_branch_without_a_wait_is_decided_with_the_step_before_it(self) -> None:
        c = definition(send("a"), BranchStep("b", {"consent": "email"}, "mail", "text"),
                       SendStep("mail", "email", "t", Wait(PREVIOUS_STEP), next="end"),
                       send("text", Wait(PREVIOUS_STEP)))
        e = enroll(c)
        e.record_opt_out(c, "email", T0 + H / 2, "o")
        e.catch_up(c, T0 + D)
        assert [d for k, d in history(e) if k in ("BranchTaken", "MessageSent")] == [
            "a", "text", "text"]

    def test_attribute_and_sent_conditions(self) -> None:
        c = definition(send("a"), BranchStep("old?", {"all": [
            {"attribute": {"field": "age", "op": "ge", "value": 60}}, {"sent": "a"}]},
            "senior", "end", Wait(PREVIOUS_STEP)), send("senior"))
        young, old = enroll(c, "y", attributes={"age": 30}), enroll(c, "o", attributes={"age": 71})
        for e in (young, old):
            e.catch_up(c, T0 + D)
        assert young.sent_steps == ["a"] and old.sent_steps == ["a", "senior"]

    def test_a_stop_skips_the_path_to_the_next_decision_only(self) -> None:
        e = enroll(FLOW)
        e.stop(FLOW, StopReason.OPTED_OUT, T0 + H / 2, "o")
        assert [d for k, d in history(e) if k == "StepSkipped"] == ["hello"]


class TestSplit:
    SPLIT = definition(SplitStep("offer", (Variant("a", 70), Variant("b", 30, "offer-b"))),
                       send("offer-a", next="end"), send("offer-b"))

    def test_assignment_is_deterministic_recorded_and_weighted(self) -> None:
        counts: Counter[str] = Counter()
        for i in range(2000):
            e = enroll(self.SPLIT, f"a{i}")
            again = enroll(self.SPLIT, f"a{i}")
            assert e.variants == again.variants  # same enrollment id, same variant
            e.catch_up(self.SPLIT, T0 + D)
            sent = [d for k, d in history(e) if k == "MessageSent"]
            assert sent == [f"offer-{e.variants['offer']}"]
            counts[e.variants["offer"]] += 1
        assert 0.66 < counts["a"] / 2000 < 0.74

    def test_weights_must_be_positive_and_names_distinct(self) -> None:
        with pytest.raises(InvalidCampaign):
            definition(SplitStep("s", (Variant("a", 0), Variant("b", 1))), send("x"))
        with pytest.raises(InvalidCampaign):
            definition(SplitStep("s", (Variant("a", 1), Variant("a", 1))), send("x"))


class TestHeldSteps:
    """§2 pause: a step that fell due while paused goes on resume (recorded `StepDeferred`),
    or is skipped `deadline_passed` when the date it waited before went by."""

    REMIND = definition(send("early", Wait("appointment.starts_at", -2 * D)),
                        send("late", Wait("appointment.starts_at", -H)),
                        trigger="appointment.booked")

    def booked(self) -> Enrollment:
        return Enrollment.enroll(self.REMIND, patient_id="p", subject="a", at=T0, cause="b",
                                 dates={"appointment.starts_at": T0 + 5 * D})

    def test_a_held_step_goes_at_the_resume(self) -> None:
        e = self.booked()
        due = T0 + 3 * D
        e.collect_events()
        assert e.fire_step(self.REMIND, 0, due, due + 6 * H)
        assert history(e)[:2] == [("StepDeferred", "early"), ("MessageSent", "early")]
        assert e.last_due == due + 6 * H

    def test_a_step_held_past_its_date_is_skipped_deadline_passed(self) -> None:
        e = self.booked()
        e.fire_step(self.REMIND, 0, T0 + 3 * D)
        e.collect_events()
        assert e.fire_step(self.REMIND, 1, T0 + 5 * D - H, T0 + 6 * D)
        events = e.collect_events()
        deferred, skipped = events[0], events[1]
        assert (type(deferred).__name__, deferred.step) == ("StepDeferred", "late")
        assert (type(skipped).__name__, skipped.reason) == ("StepSkipped", "deadline_passed")
        assert e.status == "completed"

    def test_a_stale_or_repeated_timer_changes_nothing(self) -> None:
        e = self.booked()
        assert not e.fire_step(self.REMIND, 0, T0 + 3 * D - H, T0 + 4 * D)
        assert e.fire_step(self.REMIND, 0, T0 + 3 * D)
        assert not e.fire_step(self.REMIND, 0, T0 + 3 * D)


class TestDeadlines:
    def test_the_campaign_deadline_date_stops_the_enrollment(self) -> None:  # §4
        c = definition(send("a", Wait("benefits.expires_on", -30 * D)),
                       send("b", Wait(PREVIOUS_STEP, 40 * D)), deadline="benefits.expires_on")
        e = Enrollment.enroll(c, patient_id="p", subject="p", at=T0, cause="x",
                              dates={"benefits.expires_on": T0 + 60 * D})
        e.catch_up(c, T0 + 100 * D)
        assert e.status == "stopped" and e.stop_reason == "deadline_passed"
        assert e.sent_steps == ["a"]

    def test_an_end_date_completes_the_campaign_and_stops_late_steps(self) -> None:
        c = definition(send("a"), send("b", Wait(PREVIOUS_STEP, 10 * D)), ends_at=T0 + 5 * D)
        assert c.status_at(CampaignStatus.ACTIVE, T0 + 6 * D) == CampaignStatus.COMPLETED
        e = enroll(c)
        e.catch_up(c, T0 + 20 * D)
        assert (e.sent_steps, e.stop_reason) == (["a"], "deadline_passed")


class TestVersions:
    def test_a_changed_definition_is_version_n_plus_1_and_the_same_is_nothing(self) -> None:
        c = Campaign.define(FLOW)
        assert not c.revise(FLOW)
        assert c.revise(replace(FLOW, description="new words"))
        assert c.definition.version == 2 and sorted(c.versions) == [1, 2]
        assert c.at_version(1).description == ""
        with pytest.raises(InvalidCampaign):
            c.at_version(3)

    def test_lifecycle(self) -> None:
        c = Campaign.define(FLOW)
        assert c.status == "draft" and not c.pause(T0)
        assert c.activate() and c.pause(T0) and c.status == "paused"
        assert c.resume(T0 + H) and c.status == "active"
        assert c.archive(T0 + D) and c.status == "archived"
        with pytest.raises(InvalidCampaign):
            c.activate()
        with pytest.raises(InvalidCampaign):
            c.revise(replace(FLOW, description="too late"))

    def test_migrate_moves_the_pending_step_by_name_and_retimes_it(self) -> None:
        v1 = replace(FLOW, version=1)
        v2 = replace(definition(send("hello"), send("nudge-2", Wait(PREVIOUS_STEP, 2 * D))),
                     version=2)
        e = enroll(v1)
        e.catch_up(v1, T0 + 2 * H)  # hello sent at T0+1h; branch pending
        with pytest.raises(InvalidCampaign, match="--map replied\\?=STEP"):
            e.migrate(v2, {}, T0 + 3 * H, "m")
        e.collect_events()
        assert e.migrate(v2, {"replied?": "nudge-2"}, T0 + 3 * H, "m")
        assert e.campaign_version == 2
        assert history(e) == [("Migrated", ""), ("StepScheduled", "nudge-2")]
        assert e.pending_due == T0 + H + 2 * D
        assert not e.migrate(v2, {}, T0 + 4 * H, "m")  # already there


def test_gallery_welcome_nudges_only_the_silent() -> None:
    """new-patient-welcome: a business-day wait at 10:00 local, then a branch on replies."""
    c = campaign("new-patient-welcome")
    at = datetime(2026, 12, 4, 14, 0, tzinfo=UTC)  # a Friday, 11:00 in São Paulo
    e = Enrollment.enroll(c, patient_id="p", subject="p", at=at, cause="b",
                          dates={"appointment.starts_at": at + 10 * D})
    e.catch_up(c, at + 30 * D)
    sends = [(ev.step, c.calendar.local(ev.at)) for ev in e.collect_events()
             if type(ev).__name__ == "MessageSent"]
    assert [s for s, _ in sends] == ["welcome", "what-to-expect", "whatsapp-nudge"]
    assert sends[1][1].strftime("%a %H:%M") == "Sat 10:00"  # next business day, 10:00 local


def test_progress_reads_like_a_crm() -> None:  # §3 "2/5, 40 %"
    from projections.campaign_stats import progress

    assert progress(2, 5) == "2/5 (40 %)"
    assert progress(0, 3) == "0/3 (0 %)" and progress(3, 3) == "3/3 (100 %)"
