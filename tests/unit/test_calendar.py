"""The clinic's calendar and the waits that use it (§2 business days and local times,
§5 business hours), across DST in São Paulo (historic DST), New York and Lisbon."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.calendar import ClinicCalendar
from domain.schedule import APPOINTMENT_STARTS_AT, PREVIOUS_STEP, Wait

ZONES = ("America/Sao_Paulo", "America/New_York", "Europe/Lisbon")
SAO_PAULO, NEW_YORK, LISBON = (ClinicCalendar(z) for z in ZONES)


def local(calendar: ClinicCalendar, at: datetime) -> str:
    return calendar.local(at).isoformat()


class TestLocalTimesAcrossDst:
    @pytest.mark.parametrize(("calendar", "day", "at", "expected"), [
        # a skipped local time moves forward by the gap
        (NEW_YORK, date(2021, 3, 14), time(2, 30), "2021-03-14T03:30:00-04:00"),
        (LISBON, date(2021, 3, 28), time(1, 30), "2021-03-28T02:30:00+01:00"),
        (SAO_PAULO, date(2016, 10, 16), time(0, 30), "2016-10-16T01:30:00-02:00"),
        # a repeated local time is its first occurrence (still on summer time)
        (NEW_YORK, date(2021, 11, 7), time(1, 30), "2021-11-07T01:30:00-04:00"),
        (LISBON, date(2021, 10, 31), time(1, 30), "2021-10-31T01:30:00+01:00"),
        (SAO_PAULO, date(2017, 2, 18), time(23, 30), "2017-02-18T23:30:00-02:00"),
        # an ordinary day keeps its hour whatever the season
        (SAO_PAULO, date(2016, 12, 1), time(7), "2016-12-01T07:00:00-02:00"),
        (SAO_PAULO, date(2016, 6, 1), time(7), "2016-06-01T07:00:00-03:00"),
    ])
    def test_a_local_time_of_day_follows_the_zone(self, calendar: ClinicCalendar, day: date,
                                                  at: time, expected: str) -> None:
        assert local(calendar, calendar.at_local(day, at)) == expected

    def test_at_seven_local_two_days_before_the_appointment(self) -> None:  # §2
        wait = Wait.at_local(APPOINTMENT_STARTS_AT, time(7), days=-2)
        starts = datetime(2021, 3, 15, 14, tzinfo=UTC)  # Monday 10:00 in New York (EDT)
        due = wait.due_at(enrolled_at=starts, previous_due=starts,
                          dates={APPOINTMENT_STARTS_AT: starts}, calendar=NEW_YORK)
        assert local(NEW_YORK, due) == "2021-03-13T07:00:00-05:00"  # Saturday, still EST


class TestBusinessDays:
    def test_business_days_skip_sundays_and_holidays(self) -> None:
        tiradentes = ClinicCalendar("America/Sao_Paulo", closed_on=frozenset({date(2016, 4, 21)}))
        wednesday = datetime(2016, 4, 20, 13, tzinfo=UTC)  # 10:00 local
        due = tiradentes.add_business_days(wednesday, 3)  # Thu is a holiday, Sun closed
        assert local(tiradentes, due) == "2016-04-25T10:00:00-03:00"  # Fri, Sat, Mon

    def test_a_business_day_wait_after_closing_lands_at_the_next_opening(self) -> None:
        wait = Wait.business_days_after(PREVIOUS_STEP, 1)
        late = datetime(2016, 4, 30, 23, 30, tzinfo=UTC)  # Saturday 20:30 local, closed
        due = wait.due_at(enrolled_at=late, previous_due=late, dates={}, calendar=SAO_PAULO)
        # Sunday is closed; Monday 20:30 is after hours: Tuesday's opening
        assert local(SAO_PAULO, due) == "2016-05-03T08:00:00-03:00"

    def test_a_wait_survives_its_round_trip_and_old_definitions_read_back(self) -> None:
        wait = Wait.at_local(APPOINTMENT_STARTS_AT, time(9), days=-2)
        assert Wait.from_dict(wait.to_dict()) == wait
        assert Wait.from_dict({"anchor": "enrollment", "offset_seconds": 7200}) == (
            Wait.after_enrollment(timedelta(hours=2)))


moments = st.datetimes(min_value=datetime(2015, 1, 1), max_value=datetime(2030, 12, 31),
                       timezones=st.just(UTC))
calendars = st.builds(
    ClinicCalendar, time_zone=st.sampled_from(ZONES),
    open_days=st.frozensets(st.integers(0, 6), min_size=1),
    opens=st.sampled_from([time(0), time(7), time(8), time(9, 30)]),
    closes=st.sampled_from([time(12), time(18), time(20), time(23, 59)]),
    closed_on=st.frozensets(st.dates(date(2015, 1, 1), date(2031, 12, 31)), max_size=40))


@settings(max_examples=300, deadline=None)
@given(calendar=calendars, at=moments, days=st.integers(0, 15))
def test_a_business_day_wait_never_lands_outside_business_hours_or_on_a_holiday(
        calendar: ClinicCalendar, at: datetime, days: int) -> None:
    due = calendar.add_business_days(at, days)
    assert calendar.is_open(due)
    assert calendar.local(due).date() not in calendar.closed_on
    assert due >= at


@settings(max_examples=300, deadline=None)
@given(calendar=calendars, first=moments, later=st.timedeltas(timedelta(0), timedelta(days=30)))
def test_a_deferred_moment_never_moves_earlier(calendar: ClinicCalendar, first: datetime,
                                               later: timedelta) -> None:
    assert calendar.next_open(first) >= first
    assert calendar.next_open(first + later) >= calendar.next_open(first)


@settings(max_examples=500, deadline=None)
@given(zone=st.sampled_from(ZONES), day=st.dates(date(2000, 1, 1), date(2035, 12, 31)),
       at=st.times())
def test_a_local_time_wait_lands_at_that_local_time_on_that_date(zone: str, day: date,
                                                                 at: time) -> None:
    calendar = ClinicCalendar(zone)
    landed = calendar.local(calendar.at_local(day, at))
    assert landed.date() == day or landed.time() < time(3)  # a gap at midnight may roll over
    if landed.time().replace(microsecond=0) != at.replace(microsecond=0):
        # only a time the clocks skipped moves, and by the gap (at most 2 hours here)
        naive = datetime.combine(day, at)
        shifted = landed.replace(tzinfo=None) - naive
        assert timedelta(0) < shifted <= timedelta(hours=2)


def test_a_skipped_local_time_moves_forward_whatever_its_fold() -> None:
    """Found by hypothesis: 01:00 with fold=1 in Lisbon's 2000-03-26 gap (01:00→02:00)
    went back to 00:00 local; a skipped time always moves forward by the gap."""
    calendar = ClinicCalendar("Europe/Lisbon")
    landed = calendar.local(calendar.at_local(date(2000, 3, 26), time(1, 0, fold=1)))
    assert landed.replace(tzinfo=None) == datetime(2000, 3, 26, 2, 0)
