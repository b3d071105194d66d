"""Rebuilding a read model online (§7 "every read model can be dropped and rebuilt from the
event log", §8 replay): `drip projections rebuild NAME|--all`.

The live tables keep answering reads, and the projector keeps following the log, while a
fresh copy is built beside them:

1. a scratch schema `rebuild_<name>` gets the projection's DDL, run under `SET LOCAL
   search_path` (a projection's DDL names its tables unqualified for this reason);
2. the notification log is replayed into it page by page, one transaction per page, never
   past the live position `registry.POSITION` (which only grows), until less than a page
   is left;
3. one short transaction swaps: it locks the live position row (`FOR UPDATE`: the
   projector waits at its next page), replays what the live tables got meanwhile, drops
   the live tables and the views over them, moves the rebuilt tables into `public`
   (`ALTER TABLE … SET SCHEMA` takes their indexes, constraints and owned sequences, whose
   names the dropped tables have just freed), recreates the views from their definitions
   and drops the scratch schema.

Readers wait only for the swap, which gives up after `lock_timeout` seconds (a long query
holding a live table) and is tried again after another catch-up. A session advisory lock
keeps two rebuilds of one projection apart. Any other object that depends on a live table
(a foreign key, say) makes the swap fail and roll back, changing nothing. Grants and
comments on the live tables and views are not carried over (drip grants none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import Notification
from psycopg import Connection, Cursor, errors, sql

from projections import log_positions, registry
from projections.registry import LogProjection
from projections.sql import rows

Reader = Callable[[int, int], Sequence[Notification]]
"""`read(after, limit)`: up to `limit` notifications with ids after `after`, in order."""
Progress = Callable[[int, int], None]
"""`progress(done, total)`: log positions (notification ids) replayed so far, and the live
position the rebuild is heading for (it grows while the projector follows the log)."""


class RebuildError(RuntimeError):
    """The rebuild could not run or swap (another rebuild of the projection is running, the
    swap never got its locks, the DDL made something a swap cannot move); nothing changed."""


@dataclass(frozen=True)
class Rebuilt:
    """`name` was swapped in at log `position`, after replaying `notifications`."""

    name: str
    position: int
    notifications: int


def scratch_schema(projection: LogProjection) -> str:
    return f"rebuild_{projection.name}"


def rebuild(conn: Connection[Any], projection: LogProjection, read: Reader,
            decode: Callable[[Notification], Any], *, page: int = 5000,
            progress: Progress | None = None, lock_timeout: float = 5.0,
            attempts: int = 5) -> Rebuilt:
    """Rebuild `projection`'s tables from the log and swap them in (see the module doc).
    Raises `RebuildError`; on any error the live tables stay as they were and the scratch
    schema is dropped."""
    run = _Run(conn, projection, read, decode, page, progress or (lambda done, total: None))
    with _exclusive(conn, projection.name):
        run.create_scratch()
        try:
            for _ in range(attempts):
                run.catch_up()
                try:
                    return run.swap(lock_timeout)
                except errors.LockNotAvailable:
                    continue  # a reader held a live table too long: catch up, try again
            raise RebuildError(f"the swap of {projection.name!r} waited {lock_timeout} s for "
                              f"its locks {attempts} times")
        except BaseException:
            run.drop_scratch()
            raise


@contextmanager
def _exclusive(conn: Connection[Any], name: str) -> Iterator[None]:
    key = f"drip:rebuild:{name}"
    with conn.transaction():
        taken = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
    if not taken or not taken[0]:
        raise RebuildError(f"a rebuild of {name!r} is already running")
    try:
        yield
    finally:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))


class _Run:
    def __init__(self, conn: Connection[Any], projection: LogProjection, read: Reader,
                 decode: Callable[[Notification], Any], page: int, progress: Progress) -> None:
        self.conn, self.p, self.read, self.decode = conn, projection, read, decode
        self.page, self.progress = page, progress
        self.schema = sql.Identifier(scratch_schema(projection))
        self.done = self.replayed = 0

    def create_scratch(self) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(self.schema))
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(self.schema))
            self._into_scratch(cur)
            cur.execute(self.p.ddl)

    def drop_scratch(self) -> None:
        with self.conn.transaction():
            self.conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(self.schema))

    def _into_scratch(self, cur: Cursor[Any]) -> None:
        # public stays on the path for what the projection reads but does not own
        cur.execute(sql.SQL("SET LOCAL search_path TO {}, public").format(self.schema))

    def _live_position(self) -> int:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SELECT position FROM log_positions WHERE name = %s",
                        (registry.POSITION,))
            found = rows(cur)
        return found[0][0] if found else 0

    def catch_up(self) -> None:
        """Replay, outside any lock, until less than a page separates us from the live."""
        live = self._live_position()
        while True:
            self.replay_until(live)
            live = self._live_position()
            if live - self.done < self.page:
                return

    def replay_until(self, stop: int) -> None:
        """Replay the notifications in (done, stop], a page per (sub)transaction."""
        while self.done < stop:
            self.progress(self.done, stop)
            page = [n for n in self.read(self.done, self.page) if n.id <= stop]
            if page:
                with self.conn.transaction(), self.conn.cursor() as cur:
                    self._into_scratch(cur)
                    self.p.apply(cur, [self.decode(n) for n in page])
                self.replayed += len(page)
            self.done = page[-1].id if page else stop
        self.progress(self.done, stop)

    def swap(self, lock_timeout: float) -> Rebuilt:
        before = self.done, self.replayed
        try:
            return self._swap(lock_timeout)
        except BaseException:
            self.done, self.replayed = before  # the pages replayed in it were rolled back
            raise

    def _swap(self, lock_timeout: float) -> Rebuilt:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(f"{int(lock_timeout * 1000)}ms")))
            live = log_positions.lock_position(cur, registry.POSITION)
            self.replay_until(live)  # savepoints inside this transaction
            cur.execute("SET LOCAL search_path TO public")
            views = _dependent_views(cur, self.p.tables)
            for name, kind, _ in reversed(views):
                cur.execute(sql.SQL(f"DROP {kind} {{}}").format(sql.SQL(name)))
            for table in self.p.tables:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS public.{}").format(
                    sql.Identifier(table)))
                cur.execute(sql.SQL("ALTER TABLE {}.{} SET SCHEMA public").format(
                    self.schema, sql.Identifier(table)))
            for name, kind, definition in views:
                cur.execute(sql.SQL(f"CREATE {kind} {{}} AS {{}}").format(
                    sql.SQL(name), sql.SQL(definition.rstrip().rstrip(";"))))
            _refuse_leftover_types(cur, scratch_schema(self.p))
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(self.schema))
        return Rebuilt(self.p.name, live, self.replayed)


def _dependent_views(cur: Cursor[Any], tables: Sequence[str]) -> list[tuple[str, str, str]]:
    """The views (plain or materialized) that read `tables` in `public`, directly or through
    each other: `(qualified name, "VIEW" | "MATERIALIZED VIEW", definition)`, each after
    those it reads."""
    cur.execute("""
        WITH RECURSIVE dep(oid, depth) AS (
            SELECT r.ev_class, 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
             WHERE d.classid = 'pg_rewrite'::regclass AND r.ev_class <> d.refobjid
               AND d.refobjid IN (SELECT to_regclass('public.' || quote_ident(t))::oid
                                    FROM unnest(%s::text[]) t)
            UNION ALL
            SELECT r.ev_class, dep.depth + 1 FROM dep
              JOIN pg_depend d ON d.refobjid = dep.oid AND d.classid = 'pg_rewrite'::regclass
              JOIN pg_rewrite r ON r.oid = d.objid AND r.ev_class <> dep.oid)
        SELECT format('%%I.%%I', n.nspname, c.relname),
               CASE c.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END,
               pg_get_viewdef(c.oid)
          FROM dep JOIN pg_class c ON c.oid = dep.oid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         GROUP BY c.oid, n.nspname, c.relname, c.relkind ORDER BY max(dep.depth), 1
        """, (list(tables),))
    return [(r[0], r[1], r[2]) for r in rows(cur)]


def _refuse_leftover_types(cur: Cursor[Any], schema: str) -> None:
    """Dropping the scratch schema would drop, with a type the DDL created there, the
    columns of the moved tables that use it: refuse instead (the swap rolls back)."""
    cur.execute("SELECT string_agg(t.typname, ', ') FROM pg_type t JOIN pg_namespace n"
                " ON n.oid = t.typnamespace WHERE n.nspname = %s AND t.typrelid = 0"
                " AND t.typelem = 0", (schema,))
    found = rows(cur)[0][0]
    if found:
        raise RebuildError(f"the DDL of the projection created types ({found}): a rebuild"
                        " cannot move them")
