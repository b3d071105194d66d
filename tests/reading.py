"""Reading what the services wrote, the way `drip report` does."""

from __future__ import annotations

from typing import Any

from services.bootstrap import build_pool
from services.cli import read_report
from services.settings import Settings


def report(settings: Settings) -> dict[str, Any]:
    with build_pool(settings) as pool:
        return read_report(pool)
