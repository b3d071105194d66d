"""The local sinks (services/devtools/sinks.py) in a process of their own, for
`drip demo --deliver`: the SMTP server and the HTTP provider then do not share a GIL with
the replay and the gateway. It prints `ready` once both listen, answers `GET /stats` (JSON
counters of both) on `--stats-port`, and runs until terminated.

    python -m services.devtools.sink_process --smtp-port P --provider-port P \\
        --stats-port P --secret S --callback-url URL --callback-secret S --failure-rate R \\
        --open-rate R --click-rate R
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from services.devtools.sinks import ProviderSink, SmtpSink


def stats(smtp: SmtpSink, provider: ProviderSink) -> dict[str, Any]:
    return {"email_unique": smtp.unique(), "email_duplicates": smtp.duplicates(),
            "provider_unique": provider.unique(), "provider_duplicates": provider.duplicates(),
            "provider_attempts": sum(provider.attempts.values()),
            "callbacks_sent": provider.callbacks_sent,
            "callbacks_failed": provider.callbacks_failed,
            "callbacks_in_flight": provider.callbacks_in_flight,
            "opened": provider.engagement["opened"], "clicked": provider.engagement["clicked"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("smtp-port", "provider-port", "stats-port"):
        parser.add_argument(f"--{name}", type=int, required=True)
    for name in ("secret", "callback-url", "callback-secret"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--open-rate", type=float, default=0.0)
    parser.add_argument("--click-rate", type=float, default=0.0)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with SmtpSink(port=args.smtp_port) as smtp, ProviderSink(
            args.secret.encode(), port=args.provider_port, callback_url=args.callback_url,
            callback_secret=args.callback_secret.encode(),
            failure_rate=args.failure_rate, open_rate=args.open_rate,
            click_rate=args.click_rate) as provider:

        class Stats(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = json.dumps(stats(smtp, provider)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        server = ThreadingHTTPServer(("127.0.0.1", args.stats_port), Stats)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print("ready", flush=True)
        stop.wait()
        server.shutdown()


if __name__ == "__main__":
    main()
