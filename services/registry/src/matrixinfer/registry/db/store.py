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
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from sqlalchemy import and_, delete, event, func, insert, or_, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.errors import InvalidArgument, Unavailable
from matrixinfer.registry.db.migrate import upgrade_to_head
from matrixinfer.registry.db.tables import counters, events, resources, revisions
from matrixinfer.registry.domain.store import Event, Revision, StoreConflict

log = logging.getLogger(__name__)


def _decode(body: bytes) -> pb.Resource:
    resource = pb.Resource()
    resource.ParseFromString(body)
    return resource


def _translate(e: DBAPIError) -> Exception:
    """Library errors become ours; the message never carries SQL or parameters."""
    if isinstance(e.orig, psycopg.DataError):
        return InvalidArgument("the database refused a value (e.g. a NUL byte)")
    if isinstance(e, OperationalError) or e.connection_invalidated:
        return Unavailable("the registry database is unavailable; try again")
    return e


class SqlTransaction:
    def __init__(self, conn: AsyncConnection, postgres: bool, channel: str) -> None:
        self.conn = conn
        self.postgres = postgres
        self.channel = channel
        self.wrote_events = False

    async def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None:
        # FOR UPDATE (PostgreSQL): writers of one object queue up instead of failing
        # each other's compare-and-set; SQLite already has one writer at a time.
        row = (
            await self.conn.execute(
                select(resources.c.body)
                .where(
                    resources.c.kind == kind,
                    resources.c.namespace == namespace,
                    resources.c.name == name,
                )
                .with_for_update()
            )
        ).first()
        return _decode(row[0]) if row else None

    async def next_resource_version(self) -> int:
        row = (
            await self.conn.execute(
                update(counters)
                .where(counters.c.name == "resource_version")
                .values(value=counters.c.value + 1)
                .returning(counters.c.value)
            )
        ).one()
        return int(row[0])

    async def insert(self, kind: str, resource: pb.Resource) -> None:
        meta = _meta(resource)
        try:
            await self.conn.execute(
                insert(resources).values(
                    kind=kind,
                    namespace=meta.namespace,
                    name=meta.name,
                    uid=meta.uid,
                    resource_version=int(meta.resource_version),
                    body=resource.SerializeToString(),
                )
            )
        except IntegrityError as e:
            raise StoreConflict(
                f"{kind} {meta.namespace}/{meta.name} already exists"
            ) from e

    async def update(self, kind: str, resource: pb.Resource, expected_rv: int) -> None:
        meta = _meta(resource)
        result = await self.conn.execute(
            update(resources)
            .where(
                resources.c.kind == kind,
                resources.c.namespace == meta.namespace,
                resources.c.name == meta.name,
                resources.c.resource_version == expected_rv,
            )
            .values(
                resource_version=int(meta.resource_version),
                body=resource.SerializeToString(),
            )
        )
        if result.rowcount != 1:
            raise StoreConflict(
                f"{kind} {meta.namespace}/{meta.name} changed meanwhile"
            )

    async def delete(
        self, kind: str, namespace: str, name: str, expected_rv: int
    ) -> None:
        result = await self.conn.execute(
            delete(resources).where(
                resources.c.kind == kind,
                resources.c.namespace == namespace,
                resources.c.name == name,
                resources.c.resource_version == expected_rv,
            )
        )
        if result.rowcount != 1:
            raise StoreConflict(f"{kind} {namespace}/{name} changed meanwhile")

    async def add_event(self, event: Event) -> None:
        await self.conn.execute(
            insert(events).values(
                resource_version=event.resource_version,
                type=event.type,
                kind=event.kind,
                namespace=event.namespace,
                name=event.name,
                body=event.resource.SerializeToString(),
                created_s=time.time(),
            )
        )
        if self.postgres and not self.wrote_events:
            # Delivered at commit; listeners then read the events table.
            await self.conn.execute(
                text("SELECT pg_notify(:c, '')"), {"c": self.channel}
            )
        self.wrote_events = True

    async def add_revision(
        self, uid: str, kind: str, namespace: str, name: str, revision: Revision
    ) -> None:
        await self.conn.execute(
            insert(revisions).values(
                uid=uid,
                kind=kind,
                namespace=namespace,
                name=name,
                revision=revision.revision,
                body=revision.resource.SerializeToString(),
                created_s=revision.created_s,
            )
        )

    async def delete_revisions(self, uid: str) -> None:
        await self.conn.execute(delete(revisions).where(revisions.c.uid == uid))


def _meta(resource: pb.Resource) -> Any:
    which = resource.WhichOneof("object")
    assert which is not None
    return getattr(resource, which).metadata


class SqlStore:
    def __init__(self, engine: AsyncEngine, url: str, channel: str) -> None:
        self.engine = engine
        self.url = url
        self.postgres = engine.dialect.name == "postgresql"
        self.channel = channel
        self._write_lock = asyncio.Lock()  # SQLite: one writer at a time
        self._callbacks: list[Callable[[], None]] = []

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
            kwargs.update(
                pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
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
        await self.engine.dispose()

    def on_commit(self, callback: Callable[[], None]) -> None:
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
        if tx.wrote_events:
            for callback in self._callbacks:
                callback()

    async def _read(self, statement: Any) -> list[Any]:
        try:
            async with self.engine.connect() as conn:
                return list((await conn.execute(statement)).all())
        except DBAPIError as e:
            raise _translate(e) from e

    async def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None:
        rows = await self._read(
            select(resources.c.body).where(
                resources.c.kind == kind,
                resources.c.namespace == namespace,
                resources.c.name == name,
            )
        )
        return _decode(rows[0][0]) if rows else None

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
        query = select(resources.c.body).where(resources.c.kind == kind)
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
        return [_decode(row[0]) for row in await self._read(query)]

    async def events_after(self, resource_version: int, limit: int) -> list[Event]:
        rows = await self._read(
            select(
                events.c.resource_version,
                events.c.type,
                events.c.kind,
                events.c.namespace,
                events.c.name,
                events.c.body,
            )
            .where(events.c.resource_version > resource_version)
            .order_by(events.c.resource_version)
            .limit(limit)
        )
        return [Event(int(r[0]), r[1], r[2], r[3], r[4], _decode(r[5])) for r in rows]

    async def compact(self, keep_events: int, older_than_s: float) -> int:
        """Drop events that are both beyond the newest ``keep_events`` and older than
        ``older_than_s``; remember the newest dropped resourceVersion."""
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

    async def changes(self) -> AsyncIterator[None]:
        """PostgreSQL: one LISTEN connection per process. SQLite: nothing to follow."""
        if not self.postgres:
            await asyncio.Event().wait()
            return
        params = make_url(self.url).set(drivername="postgresql")
        dsn = params.render_as_string(hide_password=False)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(f'LISTEN "{self.channel}"')  # noqa: S608 - our own name
            yield None  # catch up on anything committed before LISTEN took effect
            async for _ in conn.notifies():
                yield None


def redacted_url(url: str) -> str:
    """The database URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
