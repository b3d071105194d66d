"""Reading what the services wrote, the way `drip report` does."""

from __future__ import annotations

from typing import Any

from services.bootstrap import build_pool
from services.cli import read_report
from services.settings import Settings


def report(settings: Settings, clinic: str | None = None) -> dict[str, Any]:
    """`drip report --clinic C --json`; without `clinic`, that of the one clinic there is
    (an empty report when there is none)."""
    with build_pool(settings) as pool:
        if clinic is not None:
            return read_report(pool, clinic)
        every = read_report(pool)
    assert len(every["clinics"]) <= 1, f"several clinics: {sorted(every['clinics'])}"
    one = next(iter(every["clinics"].values()), {"campaigns": {}, "ignored": {}})
    return {**one, "dead_letters": every["dead_letters"]}
