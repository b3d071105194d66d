"""The delivery sinks over real loopback sockets: SMTP with aiosmtplib, the provider with httpx."""

from __future__ import annotations

import email.policy
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiosmtplib
import httpx
import pytest

from services.devtools.sinks import ProviderSink, SmtpSink

SECRET = b"provider-secret"
CALLBACK_SECRET = b"callback-secret"


async def _send(client: aiosmtplib.SMTP, message_id: str, to: str = "ana@clinic.example") -> None:
    """Send a mail with this Message-ID written raw: Python 3.11's EmailMessage would cut
    "<abc:step:1@drip>" short to "<abc"."""
    message = EmailMessage()
    message["From"] = "Clínica Vitória <no-reply@drip.example>"
    message["To"] = to
    message["Subject"] = "Lembrete da sua consulta"
    message["X-Drip-Enrollment"] = "enr-1"
    message.set_content("Olá Ana, sua consulta é amanhã às 9h.")
    raw = f"Message-ID: {message_id}\r\n".encode() + message.as_bytes(policy=email.policy.SMTP)
    await client.sendmail("no-reply@drip.example", [to], raw)


def _sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _post(client: httpx.Client, sink: ProviderSink, key: str, to: str = "+5527999990000",
          signature: str | None = None) -> httpx.Response:
    body = json.dumps({"to": to, "channel": "sms", "body": "Olá", "reference": key}).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": key,
               "X-Drip-Signature": signature if signature is not None else _sign(SECRET, body)}
    return client.post(f"{sink.url}/v1/messages", content=body, headers=headers)


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# ------------------------------------------------------------------------------------------ SMTP


async def test_smtp_sink_keeps_authenticated_mail_and_counts_duplicates() -> None:
    with SmtpSink(username="drip", password="s3cret") as smtp:
        assert smtp.port > 0
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp.port, start_tls=False, timeout=5)
        async with client:
            await client.login("drip", "s3cret")
            await _send(client, "<abc:step:1@drip>")
            await _send(client, "<abc:step:2@drip>")
            await _send(client, "<abc:step:1@drip>")  # a duplicate send

        assert len(smtp.messages) == 3
        received = smtp.messages[0]
        assert received["Subject"] == "Lembrete da sua consulta"
        assert received["To"] == "ana@clinic.example"
        assert received["X-Drip-Enrollment"] == "enr-1"
        assert received.get_content().strip() == "Olá Ana, sua consulta é amanhã às 9h."
        assert smtp.by_key == {"abc:step:1": 2, "abc:step:2": 1}
        assert smtp.unique() == 2
        assert smtp.duplicates() == 1


async def test_smtp_sink_refuses_wrong_credentials_and_unauthenticated_mail() -> None:
    with SmtpSink(username="drip", password="s3cret") as smtp:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp.port, start_tls=False, timeout=5)
        async with client:
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
                await client.login("drip", "wrong")
            assert refused.value.code == 535
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as no_auth:
                await _send(client, "<x@drip>")
            assert no_auth.value.code == 530
        assert smtp.messages == []
        assert smtp.unique() == 0


async def test_smtp_sink_hard_bounces_a_bounce_domain() -> None:
    with SmtpSink() as smtp:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp.port, start_tls=False, timeout=5)
        async with client:
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as bounced:
                await _send(client, "<k:1@drip>", to="nobody@bounce.invalid")
            [refusal] = bounced.value.recipients
            assert refusal.code == 550
            assert "5.1.1 mailbox unavailable" in refusal.message
            # Without credentials configured, no AUTH is needed.
            await _send(client, "<k:2@drip>")
        assert smtp.by_key == {"k:2": 1}


# -------------------------------------------------------------------------------------- provider


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def test_provider_rejects_a_bad_signature(http: httpx.Client) -> None:
    with ProviderSink(SECRET) as sink:
        assert sink.url == f"http://127.0.0.1:{sink.port}"
        wrong = _post(http, sink, "k1", signature=_sign(b"other", b"{}"))
        missing = http.post(f"{sink.url}/v1/messages", json={"to": "+55", "reference": "k1"})
        assert (wrong.status_code, wrong.json()) == (401, {"error": "invalid signature"})
        assert missing.status_code == 401
        assert sink.attempts == {} and sink.by_key == {}


def test_provider_fails_first_attempts_then_accepts(http: httpx.Client) -> None:
    with ProviderSink(SECRET, fail_first=2) as sink:
        answers = [_post(http, sink, "enr-1:step:1") for _ in range(3)]
        assert [a.status_code for a in answers] == [503, 503, 202]
        assert answers[0].json() == {"error": "temporarily unavailable"}
        accepted = answers[2].json()
        assert accepted["status"] == "queued"
        assert accepted["id"].startswith("msg_") and len(accepted["id"]) == 4 + 12
        assert sink.attempts == {"enr-1:step:1": 3}
        assert sink.by_key == {"enr-1:step:1": 1}
        assert sink.unique() == 1 and sink.duplicates() == 0
        assert sink.requests[0]["reference"] == "enr-1:step:1"


def test_provider_random_failures_hit_first_attempts_only(http: httpx.Client) -> None:
    with ProviderSink(SECRET, failure_rate=0.5, seed=3) as sink:
        for n in range(10):
            for _attempt in range(2):
                if _post(http, sink, f"k{n}").status_code == 202:
                    break
        assert sink.unique() == 10 and sink.duplicates() == 0
        assert 0 < sum(1 for n in sink.attempts.values() if n == 2) < 10


def test_provider_that_hangs_times_the_client_out_then_accepts_the_retry() -> None:
    with ProviderSink(SECRET, hang_first=1, hang_seconds=1.0) as sink, \
            httpx.Client(timeout=0.3) as client:
        with pytest.raises(httpx.TimeoutException):
            _post(client, sink, "slow")
        retry = _post(client, sink, "slow")
        assert retry.status_code == 202
        assert sink.attempts == {"slow": 2}
        # The hung request finishes after its client left: it is dropped, not accepted.
        time.sleep(0.9)
        assert sink.by_key == {"slow": 1}


def test_provider_refuses_an_invalid_number(http: httpx.Client) -> None:
    with ProviderSink(SECRET) as sink:
        answer = _post(http, sink, "k", to="+0001234")
        assert (answer.status_code, answer.json()) == (400, {"error": "invalid number"})
        assert sink.attempts == {"k": 1} and sink.by_key == {}


def test_provider_is_idempotent_but_shows_duplicates(http: httpx.Client) -> None:
    with ProviderSink(SECRET) as sink:
        first, second = _post(http, sink, "dup"), _post(http, sink, "dup")
        assert first.status_code == second.status_code == 202
        assert first.json()["id"] == second.json()["id"]
        assert sink.by_key == {"dup": 2}
        assert sink.duplicates() == 1 and sink.unique() == 1
        assert len(sink.requests) == 2


class _Receiver:
    """A tiny HTTP server in a thread keeping every callback; `fail_first` answers 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.calls = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls += 1
                status = 500 if receiver.calls <= fail_first else 204
                if status == 204:
                    receiver.received.append((body, dict(self.headers.items())))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callbacks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_provider_calls_back_once_per_key_with_a_valid_signature(http: httpx.Client) -> None:
    with _Receiver(fail_first=1) as receiver, ProviderSink(
            SECRET, callback_url=receiver.url, callback_secret=CALLBACK_SECRET) as sink:
        accepted = _post(http, sink, "cb:1").json()
        _post(http, sink, "cb:1")  # a duplicate send is not called back again
        assert _wait_for(lambda: sink.callbacks_sent == 1)
        time.sleep(0.3)
        assert sink.callbacks_sent == 1 and sink.callbacks_failed == 0
        assert receiver.calls == 2  # the first callback got a 500 and was retried

    [(body, headers)] = receiver.received
    assert headers["X-Provider-Signature"] == _sign(CALLBACK_SECRET, body)
    callback = json.loads(body)
    assert callback["id"] == accepted["id"]
    assert callback["reference"] == "cb:1"
    assert callback["status"] == "delivered"
    assert callback["at"].endswith("Z")


def test_provider_gives_up_a_callback_nobody_answers(http: httpx.Client) -> None:
    with _Receiver(fail_first=100) as receiver, ProviderSink(SECRET, callback_url=receiver.url) as sink:
        assert _post(http, sink, "lost").status_code == 202
        assert _wait_for(lambda: sink.callbacks_failed == 1, timeout=10.0)
        assert sink.callbacks_sent == 0
        assert receiver.calls == 6  # the first attempt and 5 retries
