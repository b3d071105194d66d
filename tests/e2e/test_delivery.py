"""`drip demo --deliver` in small: the gateways deliver every message of a replay to the
real local SMTP server and HTTP provider through the real Kafka and PostgreSQL, each
exactly once, and the receipts (SMTP 250, the provider's signed callbacks) end up in the
report's funnel (§6, §7)."""

from __future__ import annotations

from collections.abc import Callable

from services.devtools.demo import run_demo
from services.settings import Settings
from tests.e2e.oracle import expected_report
from tests.reading import report as read_report
from tests.shared_data import CSV

ROWS = 400


def no_progress(total: int) -> Callable[[int], None]:
    return lambda n: None


def test_every_message_is_delivered_once_and_counted_in_the_funnel(settings: Settings) -> None:
    result = run_demo(settings, CSV, ROWS, no_progress, deliver=True, failure_rate=0.3)
    d = result.delivered
    assert d is not None
    report = read_report(settings)
    # delivery changes nothing the campaigns decide
    expected = expected_report(CSV, ROWS)
    for name, c in report["campaigns"].items():
        assert {k: c[k] for k in ("enrolled", "completed", "stopped")} == {
            k: expected["campaigns"][name][k] for k in ("enrolled", "completed", "stopped")}
        for step, n in c["steps"].items():
            assert n["sent"] == expected["campaigns"][name]["steps"][step]["sent"]

    steps = [n for c in report["campaigns"].values() for n in c["steps"].values()]
    sent = sum(n["sent"] for n in steps)
    assert result.dispatched == sent
    ledger = {ch: s for ch, s in d.ledger.items()}
    assert sum(sum(s.values()) for s in ledger.values()) == sent  # every request, once
    assert all("sending" not in s for s in ledger.values())
    # each channel's messages reached its sink exactly once, retries included
    assert d.email_duplicates == 0 and d.provider_duplicates == 0
    assert d.email_unique == ledger["email"]["sent"]
    assert d.provider_unique == ledger["sms"]["sent"]
    assert d.provider_attempts > d.provider_unique  # 30 % of first attempts failed: retried
    assert d.callbacks == d.provider_unique
    # the funnel: every sent message is delivered, failed or bounced, once
    delivered = sum(n.get("delivered", 0) for n in steps)
    failed = sum(n.get("failed", 0) + n.get("bounced", 0) for n in steps)
    assert delivered == d.email_unique + d.provider_unique
    assert delivered + failed == sent
    nudges = report["campaigns"]["no-show-recovery"]["steps"]["rebook-nudge"]["sent"]
    assert sum(ledger["email"].values()) == nudges  # the one e-mail step, each message once
    # opened and clicked come from the provider's callbacks (about half and a tenth of the
    # SMS), each recorded once on its enrollment
    opened = sum(n.get("opened", 0) for n in steps)
    clicked = sum(n.get("clicked", 0) for n in steps)
    assert opened == d.opened and clicked == d.clicked
    assert 0.35 * d.provider_unique < opened < 0.65 * d.provider_unique
    assert 0 < clicked < opened
