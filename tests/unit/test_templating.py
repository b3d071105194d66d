"""Message templates of `send` steps (§2): merge fields, local dates and times in the clinic's
zone and locale (across DST in New York and Lisbon), and the refusals `check` makes when a
campaign is applied (unknown field, syntax error, sandbox escape, naive datetime)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import DomainError
from domain.templating import (
    MERGE_FIELDS,
    MessageTemplate,
    RenderedMessage,
    TemplateError,
    check,
    render,
)

ZONES = ("America/Sao_Paulo", "America/New_York", "Europe/Lisbon")
SAO_PAULO, NEW_YORK, LISBON = ZONES

REMINDER = MessageTemplate(
    subject="{{ clinic.name }}: {{ appointment.starts_at | local_date }}",
    body="Hi {{ patient.first_name }}, see you {{ appointment.starts_at | weekday }} at "
         "{{ appointment.starts_at | local_time }}. Stop: {{ unsubscribe_url }}",
)


def context(starts_at: datetime, **extra: object) -> dict[str, object]:
    """The sample context with the appointment at `starts_at`."""
    fields = {key: dict(value) if isinstance(value, dict) else value for key, value in MERGE_FIELDS.items()}
    fields["appointment"] = {**MERGE_FIELDS["appointment"], "starts_at": starts_at}  # type: ignore[dict-item]
    return {**fields, **extra}


def text(template: str, value: object, *, locale: str = "en", zone: str = SAO_PAULO) -> str:
    """`template` rendered with `value` as `v`, whitespace normalised (Babel uses U+202F)."""
    rendered = render(MessageTemplate(template), {"v": value}, locale=locale, time_zone=zone)
    return " ".join(rendered.body.split())


def refusal(template: MessageTemplate, *, locale: str = "en", zone: str = SAO_PAULO) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        check(template, locale=locale, time_zone=zone)
    return caught.value


class TestReminder:
    def test_english_in_sao_paulo_time(self) -> None:
        message = render(REMINDER, context(datetime(2027, 1, 5, 10, tzinfo=UTC)), locale="en",
                         time_zone=SAO_PAULO)
        assert message.subject == "Clínica Sorriso: Jan 5, 2027"
        assert " ".join(message.body.split()) == (
            "Hi Ana, see you Tuesday at 7:00 AM. Stop: https://drip.example/u/0b5e6f52")

    @pytest.mark.parametrize("locale", ["pt_BR", "pt-BR"])
    def test_brazilian_portuguese_in_sao_paulo_time(self, locale: str) -> None:
        message = render(REMINDER, context(datetime(2027, 1, 5, 10, tzinfo=UTC)), locale=locale,
                         time_zone=SAO_PAULO)
        assert message == RenderedMessage(
            subject="Clínica Sorriso: 5 de jan. de 2027",
            body="Hi Ana, see you terça-feira at 07:00. Stop: https://drip.example/u/0b5e6f52")

    def test_the_local_date_is_the_clinics_not_utcs(self) -> None:
        late = datetime(2027, 1, 6, 1, 30, tzinfo=UTC)  # still the 5th in São Paulo
        assert text("{{ v | local_date }} {{ v | weekday }}", late) == "Jan 5, 2027 Tuesday"
        assert text("{{ v | local_date }}", late, zone="UTC") == "Jan 6, 2027"

    def test_a_template_without_subject_renders_none(self) -> None:
        message = render(MessageTemplate("Hi {{ patient['first_name'] }}"), MERGE_FIELDS, locale="en",
                         time_zone=SAO_PAULO)
        assert message == RenderedMessage(body="Hi Ana", subject=None)

    def test_the_subject_is_one_line(self) -> None:
        template = MessageTemplate("b", subject="Hello {{ patient.first_name }}\n")
        hostile = {"patient": {"first_name": "Ana\r\nBcc: all@example.com"}}
        assert render(template, hostile, locale="en", time_zone=SAO_PAULO).subject == (
            "Hello Ana Bcc: all@example.com")

    def test_no_html_escaping_and_no_trailing_newline(self) -> None:
        assert render(MessageTemplate("{{ v }}\n"), {"v": "<b>&</b>"}, locale="en",
                      time_zone=SAO_PAULO).body == "<b>&</b>"


class TestAcrossDst:
    @pytest.mark.parametrize(("at", "zone", "expected"), [
        # New York springs forward on 2026-03-08: EST (UTC-5) before, EDT (UTC-4) after
        (datetime(2026, 3, 7, 17, tzinfo=UTC), NEW_YORK, "Mar 7, 2026 12:00"),
        (datetime(2026, 3, 8, 16, tzinfo=UTC), NEW_YORK, "Mar 8, 2026 12:00"),
        # and falls back on 2026-11-01
        (datetime(2026, 10, 31, 16, tzinfo=UTC), NEW_YORK, "Oct 31, 2026 12:00"),
        (datetime(2026, 11, 1, 17, tzinfo=UTC), NEW_YORK, "Nov 1, 2026 12:00"),
        # Lisbon: WET (UTC+0) until 2026-03-29, WEST (UTC+1) after, back on 2026-10-25
        (datetime(2026, 3, 28, 12, tzinfo=UTC), LISBON, "Mar 28, 2026 12:00"),
        (datetime(2026, 3, 29, 11, tzinfo=UTC), LISBON, "Mar 29, 2026 12:00"),
        (datetime(2026, 10, 25, 12, tzinfo=UTC), LISBON, "Oct 25, 2026 12:00"),
        # São Paulo has had no DST since 2019: always UTC-3
        (datetime(2027, 1, 5, 15, tzinfo=UTC), SAO_PAULO, "Jan 5, 2027 12:00"),
    ])
    def test_noon_local_on_either_side(self, at: datetime, zone: str, expected: str) -> None:
        assert text("{{ v | local_date }} {{ v | local_time('HH:mm') }}", at, zone=zone) == expected

    def test_the_local_datetime_in_the_clinics_locale(self) -> None:
        at = datetime(2026, 3, 8, 16, tzinfo=UTC)
        assert "12:00:00" in text("{{ v | local_datetime }}", at, zone=NEW_YORK)
        assert text("{{ v | local_datetime }}", at, locale="pt_BR", zone=LISBON) == (
            "8 de mar. de 2026 16:00:00")

    def test_the_hour_before_and_after_the_change_are_two_hours_apart_in_local_time(self) -> None:
        before = datetime(2026, 3, 8, 6, 30, tzinfo=UTC)  # 01:30 EST
        after = before + timedelta(hours=1)  # 03:30 EDT: 02:xx does not exist that night
        assert text("{{ v | local_time('HH:mm') }}", before, zone=NEW_YORK) == "01:30"
        assert text("{{ v | local_time('HH:mm') }}", after, zone=NEW_YORK) == "03:30"

    @given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 12, 31),
                        timezones=st.timezones()),
           st.sampled_from(ZONES))
    def test_local_time_is_the_wall_clock_of_the_zone(self, at: datetime, zone: str) -> None:
        expected = at.astimezone(ZoneInfo(zone)).strftime("%H:%M")
        assert text("{{ v | local_time('HH:mm') }}", at, zone=zone) == expected


class TestFilters:
    def test_a_date_is_accepted_as_is_by_local_date_and_weekday(self) -> None:
        day = date(2027, 3, 31)
        assert text("{{ v | local_date('long') }}, {{ v | weekday }}", day, locale="pt_BR") == (
            "31 de março de 2027, quarta-feira")

    def test_money_in_brazilian_portuguese(self) -> None:
        rendered = text("{{ v | money }}", Decimal("180.50"), locale="pt_BR")
        assert "R$" in rendered
        assert "180,50" in rendered

    def test_money_in_another_currency_and_locale(self) -> None:
        assert text("{{ v | money('USD') }}", 1234.5) == "$1,234.50"

    def test_money_refuses_what_is_not_a_number(self) -> None:
        with pytest.raises(TemplateError, match="body: money needs a number, got str"):
            text("{{ v | money }}", "180")

    @pytest.mark.parametrize("filter_", ["local_date", "local_time", "local_datetime", "weekday"])
    def test_a_naive_datetime_is_refused(self, filter_: str) -> None:
        with pytest.raises(TemplateError, match="must be|timezone-aware") as caught:
            text(f"\n{{{{ v | {filter_} }}}}", datetime(2027, 1, 5, 10))
        assert caught.value.part == "body"
        assert caught.value.line == 2
        assert "naive" in str(caught.value)

    def test_a_date_is_refused_where_a_time_is_needed(self) -> None:
        with pytest.raises(TemplateError, match="local_time needs a timezone-aware datetime, got date"):
            text("{{ v | local_time }}", date(2027, 1, 5))

    def test_a_filter_on_a_string_field_is_refused_at_check(self) -> None:
        assert "got str" in str(refusal(MessageTemplate("{{ patient.first_name | local_time }}")))


class TestCheck:
    def test_every_merge_field_renders(self) -> None:
        paths = [f"{group}.{field}" for group, fields in MERGE_FIELDS.items() if isinstance(fields, dict)
                 for field in fields]
        assert len(paths) == 4 + 3 + 3 + 6 + 2 + 4
        template = MessageTemplate(" ".join(f"{{{{ {path} }}}}" for path in paths) + " {{ unsubscribe_url }}",
                                   subject="{{ benefits.remaining | money(benefits.currency) }}")
        check(template, locale="pt_BR", time_zone=SAO_PAULO)
        check(template, locale="en", time_zone=NEW_YORK)

    def test_the_sample_matches_the_spec(self) -> None:
        assert set(MERGE_FIELDS) == {"patient", "appointment", "benefits", "clinic", "campaign",
                                     "enrollment", "unsubscribe_url"}
        starts_at = MERGE_FIELDS["appointment"]["starts_at"]  # type: ignore[index]
        assert isinstance(starts_at, datetime) and starts_at.utcoffset() == timedelta(0)

    def test_an_unknown_field_in_the_body_is_refused(self) -> None:
        error = refusal(MessageTemplate("Hi\n{{ patient.middle_name }}", subject="ok"))
        assert str(error).startswith("body: unknown merge field: ")
        assert "middle_name" in str(error)
        assert (error.part, error.line) == ("body", 2)
        assert isinstance(error, DomainError)

    def test_an_unknown_field_in_the_subject_is_refused(self) -> None:
        error = refusal(MessageTemplate("ok", subject="{{ foo }}"))
        assert str(error).startswith("subject: unknown merge field: ")
        assert "'foo'" in str(error)

    @pytest.mark.parametrize("body", [
        "{% if enrollment.variant == 'B' %}{{ patient.nickname }}{% endif %}",
        "{% if enrollment.variant == 'B' %}{{ appointment['room'] }}{% endif %}",
        "{% if false %}{{ promo_code }}{% endif %}",
    ])
    def test_an_unknown_field_in_a_branch_the_sample_skips_is_refused(self, body: str) -> None:
        error = refusal(MessageTemplate(body))
        assert str(error).startswith("body: unknown merge field: ")

    def test_locals_loops_and_mapping_methods_are_not_unknown_fields(self) -> None:
        check(MessageTemplate("{% set who = patient %}{{ who.first_name }} "
                              "{% for key, value in clinic.items() %}{{ loop.index }}{{ key }}{% endfor %} "
                              "{{ appointment.starts_at.year }} {{ appointment is defined }}"),
              locale="en", time_zone=SAO_PAULO)

    @pytest.mark.parametrize("body", ["{{ patient.middle_name is defined }}",
                                      "{{ patient.frist_name | default('there') }}"])
    def test_an_unknown_field_is_refused_even_when_guarded(self, body: str) -> None:
        assert str(refusal(MessageTemplate(body))).startswith("body: unknown merge field: 'patient.")

    def test_a_syntax_error_is_refused_with_its_line(self) -> None:
        error = refusal(MessageTemplate("ok", subject="{{ patient.first_name }"))
        assert str(error) == "subject line 1: unexpected '}'"
        error = refusal(MessageTemplate("line one\n{% if %}"))
        assert str(error).startswith("body line 2: ")

    def test_an_unknown_filter_is_refused_even_in_a_branch_not_taken(self) -> None:
        error = refusal(MessageTemplate("{% if false %}{{ patient.first_name | shout }}{% endif %}"))
        assert str(error) == "body line 1: No filter named 'shout'."

    @pytest.mark.parametrize("body", [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ patient.update({'first_name': 'x'}) }}",
    ])
    def test_the_sandbox_refuses_escapes_and_mutation(self, body: str) -> None:
        error = refusal(MessageTemplate(body))
        assert str(error).startswith("body: refused by the sandbox: ")

    def test_an_expression_that_fails_is_refused(self) -> None:
        assert "cannot render" in str(refusal(MessageTemplate("{{ patient.first_name + 1 }}")))

    def test_an_include_is_refused(self) -> None:
        assert "cannot render" in str(refusal(MessageTemplate("{% include 'other' %}")))

    @pytest.mark.parametrize(("locale", "zone", "message"), [
        ("xx_YY", SAO_PAULO, "unknown locale 'xx_YY'"),
        ("en", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ])
    def test_an_unknown_locale_or_zone_is_refused(self, locale: str, zone: str, message: str) -> None:
        error = refusal(MessageTemplate("ok"), locale=locale, zone=zone)
        assert str(error) == message
        assert error.part is None


class TestRender:
    def test_a_context_missing_a_field_is_refused(self) -> None:
        with pytest.raises(TemplateError) as caught:
            render(REMINDER, {"patient": {"first_name": "Ana"}, "clinic": {"name": "C"},
                              "appointment": {}}, locale="en", time_zone=SAO_PAULO)
        assert str(caught.value) == (
            "subject: unknown merge field: 'dict object' has no attribute 'starts_at' (line 1)")

    def test_a_context_missing_a_group_is_refused(self) -> None:
        with pytest.raises(TemplateError, match="^body: unknown merge field: 'benefits' is undefined"):
            render(MessageTemplate("{{ benefits.remaining | money }}"), {}, locale="en", time_zone=SAO_PAULO)

    def test_render_takes_fields_check_does_not_know(self) -> None:
        message = render(MessageTemplate("{{ extra }}"), {"extra": "x"}, locale="en", time_zone=SAO_PAULO)
        assert message.body == "x"

    def test_a_template_compiles_once(self) -> None:
        from domain import templating
        source = "{{ patient.first_name }} compiled once"
        for _ in range(3):
            render(MessageTemplate(source), MERGE_FIELDS, locale="en", time_zone=SAO_PAULO)
        info = templating._compile.cache_info()
        render(MessageTemplate(source), MERGE_FIELDS, locale="en", time_zone=SAO_PAULO)
        assert templating._compile.cache_info().hits == info.hits + 1
        assert templating._compile.cache_info().misses == info.misses


class TestMessageTemplateDict:
    @pytest.mark.parametrize("template", [MessageTemplate("b"), MessageTemplate("b", subject="s")])
    def test_round_trip(self, template: MessageTemplate) -> None:
        assert MessageTemplate.from_dict(template.to_dict()) == template

    def test_the_subject_key_only_when_set(self) -> None:
        assert MessageTemplate("b").to_dict() == {"body": "b"}
        assert MessageTemplate("b", "s").to_dict() == {"body": "b", "subject": "s"}

    @pytest.mark.parametrize(("data", "message"), [
        ({}, "body: must be a string"),
        ({"body": 3}, "body: must be a string, got int"),
        ({"body": "b", "subject": ["s"]}, "subject: must be a string, got list"),
        ({"body": "b", "subjet": "s"}, "unknown template keys: subjet"),
    ])
    def test_malformed_dicts_are_refused(self, data: dict[str, object], message: str) -> None:
        with pytest.raises(TemplateError, match=message):
            MessageTemplate.from_dict(data)
