"""Local stand-ins for the outside world that drip's channel gateways deliver to ("sinks").

`SmtpSink` is a real SMTP server (aiosmtpd) and `ProviderSink` a real HTTP SMS/WhatsApp
provider (FastAPI on uvicorn); both run in a background thread on loopback only, for
`drip demo --deliver` and the tests. They count what they receive per idempotency key, so a
test can prove that every message arrived exactly once, and they can inject the failures a
gateway must survive (hard bounces, 503s, hangs, invalid numbers). Never for production.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import hashlib
import hmac
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import default as default_policy
from types import TracebackType
from typing import Any, Self

import httpx
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.adapters.channels import sign

__all__ = ["ProviderSink", "SmtpSink"]

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0
_CALLBACK_RETRIES = 5
_CALLBACK_BACKOFF_S = 0.2
_CALLBACK_TIMEOUT_S = 5.0
_CALLBACK_CONCURRENCY = 16  # callbacks in flight at once, as a provider's webhook workers


class _KeyCounts:
    """What a sink received, counted by idempotency key, behind one lock; a sink is a
    context manager: `start()` on entry, `stop()` on exit."""

    def __init__(self) -> None:
        self.by_key: dict[str, int] = {}
        self._lock = threading.Lock()

    def unique(self) -> int:
        """How many distinct idempotency keys arrived."""
        with self._lock:
            return len(self.by_key)

    def duplicates(self) -> int:
        """How many arrived again for a key already seen: sum(n - 1)."""
        with self._lock:
            return sum(n - 1 for n in self.by_key.values())

    def start(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --------------------------------------------------------------------------------------- SMTP


class _QuietDeprecation(logging.Filter):
    """aiosmtpd 1.4 logs "Session.login_data is deprecated" on every successful AUTH,
    from its own code: drop that line, keep the rest of its log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Session.login_data is deprecated")


_QUIET = _QuietDeprecation()


class _Controller(Controller):
    """aiosmtpd's Controller, able to bind port 0: it learns the bound port before it
    connects to itself to check that the server answers."""

    def _trigger_server(self) -> None:
        if self.port == 0 and self.server is not None:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpSink(_KeyCounts):
    """A real SMTP server (aiosmtpd Controller) on 127.0.0.1 that keeps every message.

    - `messages`: every accepted DATA, parsed with `email.policy.default` (`EmailMessage`).
    - `by_key`: accepted messages per idempotency key, the `Message-ID` without its angle
      brackets and "@domain" ("<abc:step:1@drip>" -> "abc:step:1"); a message without a
      Message-ID is kept in `messages` but not counted. The same Message-ID twice is
      accepted and counted twice, so `duplicates()` shows it.
    - With `username`/`password`, AUTH PLAIN/LOGIN is offered without TLS (loopback only)
      and required before MAIL (else "530 5.7.0 Authentication required"); wrong
      credentials get "535 5.7.8 Authentication credentials invalid".
    - A recipient whose domain is in `bounce_domains` is refused at RCPT with
      "550 5.1.1 mailbox unavailable" (a hard bounce).

    The counters are guarded by a lock: read them from any thread. `start()` returns the
    bound port (a free one when `port=0`); a port in use raises `OSError`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        username: str | None = None,
        password: str | None = None,
        bounce_domains: frozenset[str] = frozenset({"bounce.invalid"}),
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.bounce_domains = frozenset(d.lower() for d in bounce_domains)
        self.messages: list[email.message.EmailMessage] = []
        super().__init__()
        self._controller: _Controller | None = None

    # Life cycle ---------------------------------------------------------------------------

    def start(self) -> int:
        """Start the server in aiosmtpd's own thread; returns the bound port."""
        if self._controller is not None:
            raise RuntimeError("SmtpSink already started")
        kwargs: dict[str, Any] = {}
        if self.username is not None:
            logging.getLogger("mail.log").addFilter(_QUIET)  # added once, however often
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        controller = _Controller(self, hostname=self.host, port=self.port,
                                 server_hostname="drip-smtp-sink", **kwargs)
        controller.start()
        self._controller = controller
        self.port = controller.port
        return self.port

    def stop(self) -> None:
        """Stop the server and its thread; the received messages stay readable."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    # aiosmtpd hooks (called in the server's thread) ---------------------------------------

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and self.username is not None
              and self.password is not None
              and hmac.compare_digest(auth_data.login, self.username.encode())
              and hmac.compare_digest(auth_data.password, self.password.encode()))
        return AuthResult(success=ok, handled=False)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        # AUTH is enforced here rather than with aiosmtpd's `auth_required`, which warns
        # on every connection when TLS is not required.
        if self.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        domain = address.rpartition("@")[2].lower()
        if domain in self.bounce_domains:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        message = BytesParser(policy=default_policy).parsebytes(raw)
        assert isinstance(message, email.message.EmailMessage)
        key = _message_key(message)
        with self._lock:
            self.messages.append(message)
            if key:
                self.by_key[key] = self.by_key.get(key, 0) + 1
        return "250 Message accepted for delivery"


def _message_key(message: email.message.EmailMessage) -> str | None:
    """"<abc:step:1@drip>" -> "abc:step:1"; None when there is no Message-ID.

    Read from the raw header: Python 3.11's parsed Message-ID header cuts an id with a ":"
    in its left part short ("<abc:step:1@drip>" reads as "<abc").
    """
    raw = next((value for name, value in message.raw_items() if name.lower() == "message-id"), None)
    if raw is None:
        return None
    text = " ".join(str(raw).split()).strip("<> ")
    if "@" in text:
        text = text.rpartition("@")[0]
    return text or None


# ----------------------------------------------------------------------------- SMS/WhatsApp


class ProviderSink(_KeyCounts):
    """A real HTTP server (FastAPI app served by uvicorn in a background thread) standing in
    for an SMS/WhatsApp provider.

    `POST /v1/messages` with JSON `{"to": "+55...", "channel": "sms"|"whatsapp", "body": str,
    "reference": key}`, headers `Idempotency-Key: key` (else `reference` is the key) and
    `X-Drip-Signature: sha256=<hex HMAC-SHA256 of the raw body with secret>`. Answers:

    - 401 `{"error": "invalid signature"}`: missing or wrong signature (not counted);
    - 400 `{"error": "invalid json" | "missing idempotency key"}` (not counted);
    - then `attempts[key] += 1`, and in this order: attempts <= `hang_first` sleep
      `hang_seconds` (seconds) first, and if the client has gone away meanwhile (it timed
      out) the request is dropped, not accepted; attempts <= `fail_first` -> 503
      `{"error": "temporarily unavailable"}`; on a key's first attempt only, 503 with
      probability `failure_rate` (`random.Random(seed)`); `to` starting with "+000" -> 400
      `{"error": "invalid number"}`; a channel other than sms/whatsapp -> 400
      `{"error": "invalid channel"}`;
    - else 202 `{"id": "msg_<12 hex>", "status": "queued"}`: the body goes to `requests`,
      `by_key[key] += 1` (a resend counts again, so `duplicates()` shows it) and a key
      already accepted gets the same id again.

    On a key's first acceptance, with `callback_url`, a background task POSTs `{"id", "reference",
    "status": "delivered", "at": "<ISO-8601 UTC>Z"}` there, signed in
    `X-Provider-Signature: sha256=<hex HMAC of the raw body with callback_secret>` (`secret`
    when None); an error or a non-2xx answer is retried up to 5 times after 0.2 s * 2^n.
    `callbacks_sent` counts delivery callbacks acknowledged (2xx), `callbacks_failed` those
    given up. After a delivered callback, a key whose hash falls below `open_rate` is also
    reported `"opened"` (a WhatsApp read receipt, an SMS link preview), and below
    `click_rate` (at most `open_rate`) `"clicked"`: deterministic per key, counted in
    `engagement` by status. `callbacks_in_flight` is the number of keys whose callbacks are
    not finished yet. One pooled HTTP client serves every callback.

    The counters are guarded by a lock: read them from any thread. `start()` returns the bound
    port (a free one when `port=0`) and raises `RuntimeError` when the server cannot start.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        callback_url: str | None = None,
        callback_secret: bytes | None = None,
        fail_first: int = 0,
        failure_rate: float = 0.0,
        hang_seconds: float = 0.0,
        hang_first: int = 0,
        seed: int = 7,
        open_rate: float = 0.0,
        click_rate: float = 0.0,
    ) -> None:
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be within [0, 1]")
        if not 0.0 <= click_rate <= open_rate <= 1.0:
            raise ValueError("need 0 <= click_rate <= open_rate <= 1")
        self.secret = secret
        self.host = host
        self.port = port
        self.callback_url = callback_url
        self.callback_secret = secret if callback_secret is None else callback_secret
        self.fail_first = fail_first
        self.failure_rate = failure_rate
        self.hang_seconds = hang_seconds
        self.hang_first = hang_first
        self.open_rate, self.click_rate = open_rate, click_rate
        super().__init__()
        self.attempts: dict[str, int] = {}
        self.requests: list[dict[str, Any]] = []
        self.accepted_at: list[float] = []  # epoch seconds of each accepted request
        self.callbacks_sent = 0
        self.callbacks_failed = 0
        self.callbacks_in_flight = 0
        self.engagement: dict[str, int] = {"opened": 0, "clicked": 0}
        self._client: httpx.AsyncClient | None = None
        self._callback_slots: asyncio.Semaphore | None = None
        self._ids: dict[str, str] = {}
        self._random = random.Random(seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """"http://127.0.0.1:PORT" (the bound port once started)."""
        return f"http://{self.host}:{self.port}"

    # Life cycle ---------------------------------------------------------------------------

    def start(self) -> int:
        """Serve in a daemon thread; returns the bound port once uvicorn is listening."""
        if self._thread is not None:
            raise RuntimeError("ProviderSink already started")
        config = uvicorn.Config(self._app(), host=self.host, port=self.port, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"provider-sink-{self.port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"ProviderSink could not start on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                server.should_exit = True
                raise RuntimeError(f"ProviderSink did not start within {_START_TIMEOUT_S} s")
            time.sleep(0.01)
        self._server, self._thread = server, thread
        if self.port == 0:
            self.port = server.servers[0].sockets[0].getsockname()[1]
        return self.port

    def stop(self) -> None:
        """Stop the server (in-flight requests get 2 s) and join its thread (10 s)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():
            server.force_exit = True
            thread.join(2.0)

    # The app (runs in the server's thread and loop) ---------------------------------------

    def _app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            self._client = httpx.AsyncClient(timeout=_CALLBACK_TIMEOUT_S)
            self._callback_slots = asyncio.Semaphore(_CALLBACK_CONCURRENCY)
            try:
                yield
            finally:
                await self._client.aclose()

        app = FastAPI(title="drip provider sink", docs_url=None, redoc_url=None, openapi_url=None,
                      lifespan=lifespan)

        @app.post("/v1/messages")
        async def send_message(request: Request) -> JSONResponse:
            return await self._handle(request)

        return app

    async def _handle(self, request: Request) -> JSONResponse:
        raw = await request.body()
        given = request.headers.get("x-drip-signature", "")
        if not hmac.compare_digest(given.encode(), sign(self.secret, raw).encode()):
            return _error(401, "invalid signature")
        try:
            payload = json.loads(raw)
        except ValueError:
            return _error(400, "invalid json")
        if not isinstance(payload, dict):
            return _error(400, "invalid json")
        key = request.headers.get("idempotency-key") or payload.get("reference")
        if not isinstance(key, str) or not key:
            return _error(400, "missing idempotency key")

        with self._lock:
            attempt = self.attempts[key] = self.attempts.get(key, 0) + 1
        if attempt <= self.hang_first and self.hang_seconds > 0:
            await asyncio.sleep(self.hang_seconds)
            if await request.is_disconnected():
                return _error(503, "client went away")  # nobody reads it: dropped
        if attempt <= self.fail_first:
            return _error(503, "temporarily unavailable")
        if attempt == 1 and self.failure_rate > 0:
            with self._lock:
                unlucky = self._random.random() < self.failure_rate
            if unlucky:
                return _error(503, "temporarily unavailable")
        to = payload.get("to")
        if not isinstance(to, str) or to.startswith("+000"):
            return _error(400, "invalid number")
        if payload.get("channel") not in ("sms", "whatsapp"):
            return _error(400, "invalid channel")

        with self._lock:
            first = key not in self._ids
            provider_id = self._ids.setdefault(key, f"msg_{uuid.uuid4().hex[:12]}")
            self.by_key[key] = self.by_key.get(key, 0) + 1
            self.requests.append(payload)
            self.accepted_at.append(time.time())
        if first and self.callback_url is not None:
            with self._lock:
                self.callbacks_in_flight += 1
            task = asyncio.create_task(self._callbacks(self.callback_url, provider_id, key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return JSONResponse({"id": provider_id, "status": "queued"}, status_code=202)

    async def _callbacks(self, url: str, provider_id: str, key: str) -> None:
        """"delivered", then "opened" and "clicked" for the keys the rates pick."""
        assert self._callback_slots is not None, "the callback slots open with the server"
        try:
            async with self._callback_slots:
                await self._callbacks_of(url, provider_id, key)
        finally:
            with self._lock:
                self.callbacks_in_flight -= 1

    async def _callbacks_of(self, url: str, provider_id: str, key: str) -> None:
        if not await self._callback(url, provider_id, key, "delivered"):
            return
        share = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0x1_0000_0000
        for status, rate in (("opened", self.open_rate), ("clicked", self.click_rate)):
            if share < rate and await self._callback(url, provider_id, key, status):
                with self._lock:
                    self.engagement[status] += 1

    async def _callback(self, url: str, provider_id: str, key: str, status: str) -> bool:
        at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = json.dumps({"id": provider_id, "reference": key, "status": status, "at": at},
                          separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json",
                   "X-Provider-Signature": sign(self.callback_secret, body)}
        assert self._client is not None, "the callback client opens with the server"
        for retry in range(_CALLBACK_RETRIES + 1):
            if retry:
                await asyncio.sleep(_CALLBACK_BACKOFF_S * 2 ** (retry - 1))
            with contextlib.suppress(httpx.HTTPError):
                response = await self._client.post(url, content=body, headers=headers)
                if response.is_success:
                    if status == "delivered":
                        with self._lock:
                            self.callbacks_sent += 1
                    return True
        if status == "delivered":
            with self._lock:
                self.callbacks_failed += 1
        return False


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
