"""A stateful (model-based) test of the Enrollment aggregate (§2, §4, §6): random campaigns
of sends, waits, a split and a branch, driven by random sequences of due timers, held
(late) timers, redelivered and stale timers, replies, opt-outs, reschedules and stops.

Checked after every step against a small reference model of what must hold:
- never two outcomes (sent or skipped) for one step: a message is never sent twice;
- a redelivered or stale timer changes nothing;
- a step goes out at or after its due time, never earlier (a held step never moves earlier);
- nothing is sent on a channel after the patient opted out of it;
- once the enrollment ends, every step on the path it took has exactly one outcome, and
  nothing happens afterwards.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from domain.campaign import (
    BranchStep,
    CampaignDefinition,
    SendStep,
    SplitStep,
    Step,
    Variant,
)
from domain.enrollment import Enrollment
from domain.schedule import PREVIOUS_STEP, Wait
from domain.stop_rules import StopReason

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
DATE = "appointment.starts_at"
CHANNELS = ("sms", "email", "whatsapp")
waits = st.one_of(
    st.builds(lambda h: Wait(PREVIOUS_STEP, timedelta(hours=h)), st.integers(0, 72)),
    st.builds(lambda h: Wait(DATE, -timedelta(hours=h)), st.integers(0, 200)),
    st.builds(lambda d: Wait(PREVIOUS_STEP, business_days=d), st.integers(0, 3)),
)


def build(send_waits: list[Wait], channels: list[str], split: bool, branch: bool,
          ) -> CampaignDefinition:
    steps: list[Step] = []
    for i, (wait, channel) in enumerate(zip(send_waits, channels, strict=False)):
        steps.append(SendStep(f"s{i}", channel, f"t/{i}", wait))
    n = len(steps)
    if split and n >= 3:
        steps.insert(1, SplitStep("ab", (Variant("a", 1), Variant("b", 1, f"s{n - 1}"))))
    if branch and n >= 2:
        steps.insert(len(steps) - 1, BranchStep("br", {"replied": True}, "end",
                                                f"s{n - 1}", Wait(PREVIOUS_STEP)))
    return CampaignDefinition("c", "model", "follow_up", "America/Sao_Paulo", "appointment.booked",
                              "appointment", tuple(steps),
                              frozenset({StopReason.OPTED_OUT, StopReason.APPOINTMENT_CANCELLED}))


class EnrollmentModel(RuleBasedStateMachine):
    campaign: CampaignDefinition
    enrollment: Enrollment

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []
        self.fired: list[tuple[int, datetime]] = []  # timers already delivered once
        self.now = T0
        self.opted_out: dict[str, int] = {}  # channel -> events recorded before the opt-out
        self.ended_at_events: int | None = None

    @initialize(send_waits=st.lists(waits, min_size=1, max_size=5),
                channels=st.lists(st.sampled_from(CHANNELS), min_size=5, max_size=5),
                split=st.booleans(), branch=st.booleans(), lead=st.integers(1, 400))
    def enroll(self, send_waits: list[Wait], channels: list[str], split: bool, branch: bool,
               lead: int) -> None:
        self.campaign = build(send_waits, channels, split, branch)
        self.enrollment = Enrollment.enroll(
            self.campaign, patient_id="p", subject="a", at=T0, cause="booked",
            dates={DATE: T0 + timedelta(hours=lead)})
        self._collect()

    def _collect(self) -> None:
        self.events += self.enrollment.collect_events()

    def _at(self, hours: int) -> datetime:
        self.now = max(self.now, self.now + timedelta(hours=hours))
        return self.now

    # -- what happens to an enrollment --------------------------------------------------
    @precondition(lambda self: self.enrollment.pending_due is not None)
    @rule(late_hours=st.integers(0, 30), held=st.booleans())
    def timer_fires(self, late_hours: int, held: bool) -> None:
        e = self.enrollment
        index, due = e.next_index, e.pending_due
        assert due is not None
        self.now = max(self.now, due)
        at = due + timedelta(hours=late_hours) if held else None
        if at:
            self.now = max(self.now, at)
        assert e.fire_step(self.campaign, index, due, at)
        self.fired.append((index, due))
        self._collect()

    @precondition(lambda self: bool(self.fired))
    @rule(data=st.data())
    def old_timer_is_redelivered(self, data: st.DataObject) -> None:
        index, due = data.draw(st.sampled_from(self.fired))
        shift = data.draw(st.sampled_from([timedelta(0), timedelta(hours=-1)]))
        before = len(self.events)
        assert not self.enrollment.fire_step(self.campaign, index, due + shift)
        self._collect()
        assert len(self.events) == before

    @rule(hours=st.integers(0, 48))
    def patient_replies(self, hours: int) -> None:
        at = self._at(hours)
        self.enrollment.catch_up(self.campaign, at)
        self.enrollment.record_reply(self.campaign, "sms", at, "reply")
        self._collect()

    @rule(hours=st.integers(0, 48), channel=st.sampled_from(CHANNELS))
    def patient_opts_out_of_a_channel(self, hours: int, channel: str) -> None:
        at = self._at(hours)
        self.enrollment.catch_up(self.campaign, at)
        self._collect()
        if self.enrollment.record_opt_out(self.campaign, channel, at, "optout"):
            self.opted_out.setdefault(channel, len(self.events))
        self._collect()

    @rule(hours=st.integers(0, 48), move=st.integers(-100, 100))
    def appointment_is_rescheduled(self, hours: int, move: int) -> None:
        at = self._at(hours)
        e = self.enrollment
        e.catch_up(self.campaign, at)
        e.reschedule(self.campaign, {DATE: e.dates[DATE] + timedelta(hours=move)}, at, "moved")
        self._collect()

    @rule(hours=st.integers(0, 48))
    def appointment_is_cancelled(self, hours: int) -> None:
        at = self._at(hours)
        self.enrollment.catch_up(self.campaign, at)
        self.enrollment.stop(self.campaign, StopReason.APPOINTMENT_CANCELLED, at, "cancel")
        self._collect()

    # -- the reference model's rules ----------------------------------------------------
    def outcomes(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for ev in self.events:
            kind = type(ev).__name__
            if kind in ("MessageSent", "StepSkipped", "BranchTaken", "VariantAssigned"):
                found.setdefault(ev.step, []).append(kind)
        return found

    @invariant()
    def one_outcome_per_step(self) -> None:
        for step, kinds in self.outcomes().items():
            assert len(kinds) == 1, (step, kinds)

    @invariant()
    def sends_never_early_nor_on_an_opted_out_channel(self) -> None:
        scheduled: dict[int, datetime] = {}
        for position, ev in enumerate(self.events):
            kind = type(ev).__name__
            if kind == "StepScheduled":
                scheduled[ev.index] = ev.due_at
            elif kind == "MessageSent":
                assert ev.at >= scheduled.get(ev.index, ev.at)
                since = self.opted_out.get(ev.channel)
                assert since is None or position < since, (ev.channel, position, since)

    @invariant()
    def an_ended_enrollment_accounts_for_its_path_and_stays_ended(self) -> None:
        e = self.enrollment
        if e.is_active:
            assert e.pending_due is not None  # an active enrollment always waits for a step
            return
        if self.ended_at_events is None:
            self.ended_at_events = len(self.events)
        assert len(self.events) == self.ended_at_events  # nothing after the end
        outcomes, index, steps = self.outcomes(), 0, self.campaign.steps
        taken = {ev.step: ev for ev in self.events
                 if type(ev).__name__ in ("BranchTaken", "VariantAssigned")}
        while index < len(steps):  # walk the path the decisions chose
            step = steps[index]
            if e.status == "stopped" and step.name not in outcomes:
                break  # a stop skips up to the next decision; later ones are not reached
            assert step.name in outcomes, (step.name, outcomes)
            index = taken[step.name].goto if step.name in taken else self.campaign.after(index)


TestEnrollmentModel = EnrollmentModel.TestCase
TestEnrollmentModel.settings = settings(max_examples=300, stateful_step_count=30,
                                        deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
