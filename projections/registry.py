"""The read models that follow the event log (§7), in one place.

Each `LogProjection` owns some tables (created by its `ddl`, which must use
`CREATE … IF NOT EXISTS` on unqualified names, so it can be run in another schema) and folds
pages of domain events into them with `apply(cur, events)`. The projector
(services/entrypoints/projector.py) applies every one of them to each page of the
notification log, in one transaction with the one log position `POSITION`; a rebuild
(`drip projections rebuild`) replays the log into fresh copies of a projection's tables and
swaps them in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import Cursor

from projections import campaign_stats

POSITION = "campaign_stats"
"""The `log_positions` name under which the projector follows the log."""


@dataclass(frozen=True)
class LogProjection:
    name: str
    ddl: str
    tables: tuple[str, ...]
    apply: Callable[[Cursor[Any], Sequence[Any]], None]


PROJECTIONS: tuple[LogProjection, ...] = (
    LogProjection("campaign_stats", campaign_stats.DDL,
                  ("campaigns", "enrollments", "campaign_counts", "step_skips"),
                  campaign_stats.apply),
)


def named(name: str) -> LogProjection:
    """The projection called `name`. Raises `KeyError` naming the known ones."""
    for p in PROJECTIONS:
        if p.name == name:
            return p
    raise KeyError(f"no projection {name!r}; known: {', '.join(p.name for p in PROJECTIONS)}")
