"""SqlStore: the Store interface on SQLAlchemy 2 async.

PostgreSQL: writers serialize on the resource_version counter row (taken as late as
possible in each transaction) and publish with NOTIFY, which PostgreSQL delivers at
commit, in commit order, to every registry process LISTENing on the same database and
schema. SQLite: one writer at a time in this process (an asyncio lock), WAL so reads
go on meanwhile; there is only one process to tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import psycopg
from sqlalchemy import (
    and_,
    bindparam,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from matrixinfer.api.envelope import metadata_of
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.errors import InvalidArgument, Unavailable
from matrixinfer.core.tasks import Uninterrupted
from matrixinfer.registry.adapters.db.migrate import upgrade_to_head
from matrixinfer.registry.adapters.db.tables import (
    audit_log,
    counters,
    events,
    resources,
    revisions,
)
from matrixinfer.registry.domain import audit
from matrixinfer.registry.domain.audit import AuditEntry, AuditQuery, AuditRecord
from matrixinfer.registry.domain.store import Change, Event, Revision, StoreConflict

log = logging.getLogger(__name__)


def _decode(body: bytes, resource_version: int | None = None) -> pb.Resource:
    resource = pb.Resource()
    resource.ParseFromString(body)
    if resource_version is not None:
        metadata_of(resource).resource_version = str(resource_version)
    return resource


def _translate(e: DBAPIError) -> Exception:
    """Library errors become ours; the message never carries SQL or parameters."""
    if isinstance(e.orig, psycopg.DataError):
        return InvalidArgument("the database refused a value (e.g. a NUL byte)")
    if isinstance(e, OperationalError) or e.connection_invalidated:
        return Unavailable("the registry database is unavailable; try again")
    return e


# PostgreSQL: the whole write is one statement, so the counter row (which orders
# commits) is held for one round trip plus the commit, not for one per table.
_PG_TARGET = {
    "insert": """
    w AS (
        INSERT INTO resources (kind, namespace, name, uid, resource_version, body)
        SELECT :kind, :namespace, :name, :uid, value, :body FROM rv RETURNING 1
    )""",
    "update": """
    w AS (
        UPDATE resources SET resource_version = (SELECT value FROM rv), body = :body
        WHERE kind = :kind AND namespace = :namespace AND name = :name
          AND resource_version = :expected_rv
        RETURNING 1
    )""",
    "delete": """
    w AS (
        DELETE FROM resources
        WHERE kind = :kind AND namespace = :namespace AND name = :name
          AND resource_version = :expected_rv
        RETURNING 1
    ),
    d AS (DELETE FROM revisions WHERE uid = :uid AND :drop_revisions)""",
}
_PG_WRITE = {
    op: text(
        """
WITH rv AS (
    UPDATE counters SET value = value + 1 WHERE name = 'resource_version'
    RETURNING value
),"""
        + target
        + """,
e AS (
    INSERT INTO events (resource_version, type, kind, namespace, name, body, created_s)
    SELECT value, :event_type, :kind, :namespace, :name, :body, :now FROM rv
),
r AS (
    INSERT INTO revisions (uid, kind, namespace, name, revision, body, created_s)
    SELECT :uid, :kind, :namespace, :name, :revision, :revision_body, :now
    FROM rv WHERE :with_revision
)
SELECT (SELECT value FROM rv), (SELECT count(*) FROM w),
       pg_notify(:channel, (SELECT value FROM rv)::text)
"""
    )
    for op, target in _PG_TARGET.items()
}


# Hot statements are built once; SQLAlchemy then reuses their compiled form.
_GET = select(resources.c.body, resources.c.resource_version).where(
    resources.c.kind == bindparam("kind"),
    resources.c.namespace == bindparam("namespace"),
    resources.c.name == bindparam("name"),
)
_GET_FOR_UPDATE = _GET.with_for_update()
_EVENTS_AFTER = (
    select(
        events.c.resource_version,
        events.c.type,
        events.c.kind,
        events.c.namespace,
        events.c.name,
        events.c.body,
    )
    .where(events.c.resource_version > bindparam("after"))
    .order_by(events.c.resource_version)
    .limit(bindparam("limit"))
)


def _body(resource: pb.Resource) -> bytes:
    """Serialize without the resourceVersion: the column is the one source of it."""
    meta = metadata_of(resource)
    rv = meta.resource_version
    meta.resource_version = ""
    try:
        return resource.SerializeToString()
    finally:
        meta.resource_version = rv


# Appending to the audit log: take the "audit" counter row (its lock, held to commit,
# serializes appends of every process; taken after any resource_version lock, so the
# order of locks is the same in every transaction), then read the previous hash in a
# new statement, which sees what the previous holder committed.
_AUDIT_RESERVE = (
    update(counters)
    .where(counters.c.name == "audit")
    .values(value=counters.c.value + bindparam("n"))
    .returning(counters.c.value)
)
_AUDIT_HASH = select(audit_log.c.hash).where(audit_log.c.seq == bindparam("seq"))
_AUDIT_COLUMNS = (
    audit_log.c.seq,
    audit_log.c.time,
    audit_log.c.actor,
    audit_log.c.action,
    audit_log.c.kind,
    audit_log.c.namespace,
    audit_log.c.name,
    audit_log.c.diff,
    audit_log.c.result,
    audit_log.c.message,
    audit_log.c.previous_hash,
    audit_log.c.hash,
)


class SqlTransaction:
    def __init__(self, conn: AsyncConnection, postgres: bool, channel: str) -> None:
        self.conn = conn
        self.postgres = postgres
        self.channel = channel
        #: The events this transaction wrote, in resourceVersion order.
        self.events: list[Event] = []

    async def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None:
        # FOR UPDATE (PostgreSQL): writers of one object queue up instead of failing
        # each other's compare-and-set; SQLite already has one writer at a time.
        params = {"kind": kind, "namespace": namespace, "name": name}
        row = (await self.conn.execute(_GET_FOR_UPDATE, params)).first()
        return _decode(row[0], row[1]) if row else None

    async def write(self, change: Change) -> Event:
        meta = metadata_of(change.resource)
        body = _body(change.resource)
        try:
            if self.postgres:
                rv, written = await self._write_postgres(change, meta, body)
            else:
                rv, written = await self._write_sqlite(change, meta, body)
        except IntegrityError as e:
            raise StoreConflict(
                f"{change.kind} {meta.namespace}/{meta.name} already exists"
            ) from e
        if written != 1:
            raise StoreConflict(
                f"{change.kind} {meta.namespace}/{meta.name} changed meanwhile"
            )
        resource = pb.Resource()
        resource.CopyFrom(change.resource)
        metadata_of(resource).resource_version = str(rv)
        event = Event(
            rv, change.event_type, change.kind, meta.namespace, meta.name, resource
        )
        self.events.append(event)
        return event

    async def append_audit(self, records: Sequence[AuditRecord]) -> list[AuditEntry]:
        if not records:
            return []
        conn = self.conn
        newest = int(
            (await conn.execute(_AUDIT_RESERVE, {"n": len(records)})).scalar_one()
        )
        first = newest - len(records) + 1
        previous = audit.GENESIS
        if first > 1:
            found = (await conn.execute(_AUDIT_HASH, {"seq": first - 1})).first()
            # A missing predecessor (removed behind our back) stays visible to
            # verification: the chain breaks right there.
            previous = found[0] if found else ""
        time = audit.timestamp()
        entries: list[AuditEntry] = []
        for seq, record in enumerate(records, start=first):
            entry = audit.seal(record, seq, time, previous)
            entries.append(entry)
            previous = entry.hash
        await conn.execute(insert(audit_log), [e.as_dict() for e in entries])
        return entries

    async def _write_postgres(
        self, change: Change, meta: Any, body: bytes
    ) -> tuple[int, int]:
        revision = change.revision
        row = (
            await self.conn.execute(
                _PG_WRITE[change.op],
                {
                    "kind": change.kind,
                    "namespace": meta.namespace,
                    "name": meta.name,
                    "uid": meta.uid,
                    "body": body,
                    "expected_rv": change.expected_rv,
                    "event_type": change.event_type,
                    "now": time.time(),
                    "drop_revisions": change.drop_revisions,
                    "with_revision": revision is not None,
                    "revision": revision.revision if revision else 0,
                    "revision_body": _body(revision.resource) if revision else b"",
                    "channel": self.channel,
                },
            )
        ).one()
        return int(row[0]), int(row[1])

    async def _write_sqlite(
        self, change: Change, meta: Any, body: bytes
    ) -> tuple[int, int]:
        conn = self.conn
        rv = int(
            (
                await conn.execute(
                    update(counters)
                    .where(counters.c.name == "resource_version")
                    .values(value=counters.c.value + 1)
                    .returning(counters.c.value)
                )
            ).scalar_one()
        )
        where = (
            resources.c.kind == change.kind,
            resources.c.namespace == meta.namespace,
            resources.c.name == meta.name,
            resources.c.resource_version == change.expected_rv,
        )
        if change.op == "insert":
            await conn.execute(
                insert(resources).values(
                    kind=change.kind,
                    namespace=meta.namespace,
                    name=meta.name,
                    uid=meta.uid,
                    resource_version=rv,
                    body=body,
                )
            )
            written = 1
        elif change.op == "update":
            result = await conn.execute(
                update(resources).where(*where).values(resource_version=rv, body=body)
            )
            written = result.rowcount
        else:
            result = await conn.execute(delete(resources).where(*where))
            written = result.rowcount
            if change.drop_revisions:
                await conn.execute(delete(revisions).where(revisions.c.uid == meta.uid))
        now = time.time()
        await conn.execute(
            insert(events).values(
                resource_version=rv,
                type=change.event_type,
                kind=change.kind,
                namespace=meta.namespace,
                name=meta.name,
                body=body,
                created_s=now,
            )
        )
        if change.revision is not None:
            await conn.execute(
                insert(revisions).values(
                    uid=meta.uid,
                    kind=change.kind,
                    namespace=meta.namespace,
                    name=meta.name,
                    revision=change.revision.revision,
                    body=_body(change.revision.resource),
                    created_s=now,
                )
            )
        return rv, written


class SqlStore:
    def __init__(self, engine: AsyncEngine, url: str, channel: str) -> None:
        self.engine = engine
        self.url = url
        self.postgres = engine.dialect.name == "postgresql"
        self._read_engine = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.postgres
            else engine
        )
        self.channel = channel
        self._write_lock = asyncio.Lock()  # SQLite: one writer at a time
        self._callbacks: list[Callable[[list[Event]], None]] = []
        # Reads and compaction finish even when their caller is cancelled
        # (core/tasks.py says why); close() waits for them.
        self._work = Uninterrupted()

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 10) -> SqlStore:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (
            None,
            "",
            ":memory:",
        ):
            # The embedded default lives in ./.matrixinfer: create it on first start.
            pathlib.Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql":
            # No pre-ping: it would cost a round trip per checkout. A dropped
            # connection surfaces as Unavailable (retryable) and is replaced.
            kwargs.update(
                pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800
            )
        engine = create_async_engine(url, **kwargs)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        try:
            await upgrade_to_head(engine)
            channel = "matrixinfer_events"
            if engine.dialect.name == "postgresql":
                async with engine.connect() as conn:
                    schema = (
                        await conn.execute(text("SELECT current_schema()"))
                    ).scalar_one()
                channel = f"matrixinfer_events_{schema}"[:63]
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, url, channel)

    async def close(self) -> None:
        await self._work.drain(timeout_s=5.0)
        await self.engine.dispose()

    def on_commit(self, callback: Callable[[list[Event]], None]) -> None:
        self._callbacks.append(callback)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlTransaction]:
        lock = contextlib.nullcontext() if self.postgres else self._write_lock
        async with lock:
            try:
                async with self.engine.begin() as conn:
                    tx = SqlTransaction(conn, self.postgres, self.channel)
                    yield tx
            except DBAPIError as e:
                if isinstance(e.orig, psycopg.errors.DeadlockDetected):
                    raise StoreConflict("concurrent writers collided") from e
                raise _translate(e) from e
        if tx.events:
            for callback in self._callbacks:
                callback(tx.events)

    async def _read(
        self, statement: Any, params: dict[str, Any] | None = None
    ) -> list[Any]:
        return await self._work.run(self._read_now(statement, params))

    async def _read_now(
        self, statement: Any, params: dict[str, Any] | None
    ) -> list[Any]:
        try:
            # Autocommit: a single read needs no transaction, and a connection that
            # never began one goes back to the pool without a ROLLBACK round trip.
            async with self._read_engine.connect() as conn:
                return list((await conn.execute(statement, params)).all())
        except DBAPIError as e:
            raise _translate(e) from e

    async def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None:
        rows = await self._read(
            _GET, {"kind": kind, "namespace": namespace, "name": name}
        )
        return _decode(rows[0][0], rows[0][1]) if rows else None

    async def current_resource_version(self) -> int:
        rows = await self._read(
            select(counters.c.value).where(counters.c.name == "resource_version")
        )
        return int(rows[0][0])

    async def compacted_resource_version(self) -> int:
        rows = await self._read(
            select(counters.c.value).where(counters.c.name == "compacted")
        )
        return int(rows[0][0])

    async def list_page(
        self, kind: str, namespace: str, after: tuple[str, str] | None, limit: int
    ) -> list[pb.Resource]:
        query = select(resources.c.body, resources.c.resource_version).where(
            resources.c.kind == kind
        )
        if namespace:
            query = query.where(resources.c.namespace == namespace)
        if after is not None:
            query = query.where(
                or_(
                    resources.c.namespace > after[0],
                    and_(
                        resources.c.namespace == after[0], resources.c.name > after[1]
                    ),
                )
            )
        query = query.order_by(resources.c.namespace, resources.c.name).limit(limit)
        return [_decode(row[0], row[1]) for row in await self._read(query)]

    async def events_after(self, resource_version: int, limit: int) -> list[Event]:
        rows = await self._read(
            _EVENTS_AFTER, {"after": resource_version, "limit": limit}
        )
        return [
            Event(int(r[0]), r[1], r[2], r[3], r[4], _decode(r[5], int(r[0])))
            for r in rows
        ]

    async def compact(self, keep_events: int, older_than_s: float) -> int:
        """Drop events that are both beyond the newest ``keep_events`` and older than
        ``older_than_s``; remember the newest dropped resourceVersion."""
        return await self._work.run(self._compact(keep_events, older_than_s))

    async def _compact(self, keep_events: int, older_than_s: float) -> int:
        async with self.transaction() as tx:
            conn = tx.conn
            newest = (
                await conn.execute(select(func.max(events.c.resource_version)))
            ).scalar_one_or_none()
            if newest is None:
                return 0
            by_count = newest - keep_events
            by_age = (
                await conn.execute(
                    select(func.max(events.c.resource_version)).where(
                        events.c.created_s < time.time() - older_than_s
                    )
                )
            ).scalar_one_or_none()
            cutoff = min(by_count, by_age if by_age is not None else 0)
            if cutoff <= 0:
                return 0
            result = await conn.execute(
                delete(events).where(events.c.resource_version <= cutoff)
            )
            await conn.execute(
                update(counters)
                .where(counters.c.name == "compacted", counters.c.value < cutoff)
                .values(value=cutoff)
            )
            return int(result.rowcount)

    async def list_revisions(self, uid: str) -> list[Revision]:
        rows = await self._read(
            select(revisions.c.revision, revisions.c.body, revisions.c.created_s)
            .where(revisions.c.uid == uid)
            .order_by(revisions.c.revision)
        )
        return [Revision(int(r[0]), _decode(r[1]), float(r[2])) for r in rows]

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        statement = select(*_AUDIT_COLUMNS).where(audit_log.c.seq > query.after)
        if query.through:
            statement = statement.where(audit_log.c.seq <= query.through)
        for column, value in (
            (audit_log.c.kind, query.kind),
            (audit_log.c.namespace, query.namespace),
            (audit_log.c.name, query.name),
            (audit_log.c.actor, query.actor),
        ):
            if value:
                statement = statement.where(column == value)
        if query.since:
            statement = statement.where(audit_log.c.time >= query.since)
        statement = statement.order_by(audit_log.c.seq).limit(query.limit)
        return [
            AuditEntry(
                int(r[0]),
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                r[7],
                r[8],
                r[9],
                r[10],
                r[11],
            )  # fmt: skip
            for r in await self._read(statement)
        ]

    async def audit_head(self) -> int:
        rows = await self._read(
            select(counters.c.value).where(counters.c.name == "audit")
        )
        return int(rows[0][0])

    async def changes(self) -> AsyncIterator[int]:
        """PostgreSQL: one LISTEN connection per process. SQLite: nothing to follow."""
        if not self.postgres:
            await asyncio.Event().wait()
            return
        params = make_url(self.url).set(drivername="postgresql")
        dsn = params.render_as_string(hide_password=False)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(f'LISTEN "{self.channel}"')  # noqa: S608 - our own name
            yield 0  # catch up on anything committed before LISTEN took effect
            async for notify in conn.notifies():
                yield int(notify.payload) if notify.payload.isdigit() else 0


def redacted_url(url: str) -> str:
    """The database URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
