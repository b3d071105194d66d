"""Channel adapters (§6): how one rendered message reaches a provider.

An adapter has one method, `send(message) -> Sent`, and raises `TransientFailure` (retry:
a timeout, a refused connection, 5xx, 429 with its Retry-After) or `PermanentFailure`
(never retry: an invalid number, a hard bounce). The gateway adds idempotency, retries,
rate limits and receipts around it. To plug in a real provider (Twilio, Zenvia, the
WhatsApp Cloud API), write one class with that method that maps the provider's request,
response and error codes, and name it in `gateway.adapters_for`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib
import httpx

from services.settings import Settings


@dataclass(frozen=True)
class Message:
    """A rendered message for one recipient. `to` is a contact point (never logged)."""

    idempotency_key: str
    channel: str
    to: str
    body: str
    subject: str | None = None


@dataclass(frozen=True)
class Sent:
    """The provider took the message: its id, and whether that already means delivered
    (SMTP's 250) or a delivery callback will follow (HTTP providers)."""

    provider: str
    provider_message_id: str
    delivered: bool


class TransientFailure(Exception):
    """Worth another attempt; `retry_after` (seconds) when the provider said."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class PermanentFailure(Exception):
    """Never worth another attempt; `bounced` for a refused recipient (a hard bounce)."""

    def __init__(self, reason: str, bounced: bool = False) -> None:
        super().__init__(reason)
        self.bounced = bounced


class ChannelAdapter(Protocol):
    name: str

    async def send(self, message: Message) -> Sent: ...

    async def close(self) -> None: ...


def sign(secret: bytes, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of the raw body, the signature header's value."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, signature: str | None) -> bool:
    return signature is not None and hmac.compare_digest(sign(secret, body), signature)


class SmtpAdapter:
    """E-mail over SMTP (aiosmtplib): STARTTLS and AUTH from settings; the Message-ID is
    the idempotency key, so a receiving system can tell a resend from a new message."""

    name = "smtp"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, message: Message) -> Sent:
        s = self.settings
        mail = EmailMessage()
        mail["From"], mail["To"] = s.smtp_from, message.to
        mail["Subject"] = message.subject or ""
        mail["Message-ID"] = message_id(message.idempotency_key)
        mail.set_content(message.body)
        try:
            errors, _ = await aiosmtplib.send(
                mail, hostname=s.smtp_host, port=s.smtp_port, start_tls=s.smtp_starttls,
                username=s.smtp_username,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                timeout=s.gateway_timeout_seconds)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            code = exc.recipients[0].code if exc.recipients else 550
            if 500 <= code < 600:
                raise PermanentFailure(f"smtp {code}: recipient refused", bounced=True) from None
            raise TransientFailure(f"smtp {code}: recipient deferred") from None
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                raise PermanentFailure(f"smtp {exc.code}: {exc.message[:200]}") from None
            raise TransientFailure(f"smtp {exc.code}: {exc.message[:200]}") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise TransientFailure(f"smtp: {type(exc).__name__}") from None
        if errors:
            raise PermanentFailure("smtp: recipient refused", bounced=True)
        return Sent(self.name, f"{message.idempotency_key}@drip", delivered=True)

    async def close(self) -> None:
        return None


def message_id(idempotency_key: str) -> str:
    """The e-mail's Message-ID for an idempotency key: `<enrollment.step.attempt@drip>`
    (the key's colons as dots: the e-mail library cuts an id-left with a colon short)."""
    return f"<{idempotency_key.replace(':', '.')}@drip>"


class HttpProviderAdapter:
    """SMS and WhatsApp through an HTTP provider (httpx): a JSON POST to
    `{provider_url}/v1/messages` signed with HMAC-SHA256 (`X-Drip-Signature`), with the
    idempotency key as the `Idempotency-Key` header, so the provider itself refuses a
    second send of one key (what covers a crash between its 200 and drip's record)."""

    def __init__(self, settings: Settings) -> None:
        self.name = settings.provider_name
        self.url = settings.provider_url.rstrip("/") + "/v1/messages"
        self.secret = settings.provider_secret.get_secret_value().encode()
        self.client = httpx.AsyncClient(timeout=settings.gateway_timeout_seconds)

    async def send(self, message: Message) -> Sent:
        body = json.dumps({"to": message.to, "channel": message.channel, "body": message.body,
                           "reference": message.idempotency_key}).encode()
        try:
            response = await self.client.post(self.url, content=body, headers={
                "Content-Type": "application/json", "Idempotency-Key": message.idempotency_key,
                "X-Drip-Signature": sign(self.secret, body)})
        except httpx.TransportError as exc:  # timeouts, refused connections
            raise TransientFailure(f"{self.name}: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientFailure(f"{self.name} {response.status_code}",
                                   _retry_after(response.headers.get("Retry-After")))
        if response.status_code >= 400:
            raise PermanentFailure(f"{self.name} {response.status_code}: "
                                   f"{_error_of(response)}"[:300])
        found = _json(response).get("id")
        return Sent(self.name, str(found or uuid.uuid4()), delivered=False)

    async def close(self) -> None:
        await self.client.aclose()


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _json(response: httpx.Response) -> dict[str, object]:
    try:
        found = response.json()
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _error_of(response: httpx.Response) -> str:
    return str(_json(response).get("error") or response.reason_phrase)
