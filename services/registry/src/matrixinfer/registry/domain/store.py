"""The storage interface the domain needs; ``matrixinfer.registry.adapters.db``
implements it.

Writes happen inside a transaction. ``next_resource_version`` hands out the global,
gap-free resourceVersion and serializes committing writers, so resourceVersions are
in commit order and a watcher reading "events after N" never misses one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.registry.domain.audit import AuditEntry, AuditQuery, AuditRecord


class StoreConflict(Exception):
    """The row changed (or appeared) since it was read: retry or report ABORTED."""


@dataclass(frozen=True)
class Event:
    resource_version: int
    type: str  # ADDED | MODIFIED | DELETED
    kind: str
    namespace: str
    name: str
    resource: pb.Resource


@dataclass(frozen=True)
class Revision:
    revision: int
    resource: pb.Resource
    created_s: float


@dataclass(frozen=True)
class Change:
    """One object written together with its event (and, for Models, a revision)."""

    op: str  # insert | update | delete
    event_type: str  # ADDED | MODIFIED | DELETED
    kind: str
    #: The object as it will be stored; its resourceVersion is assigned by the store.
    resource: pb.Resource
    #: update/delete: the resourceVersion the stored row must still have.
    expected_rv: int = 0
    revision: Revision | None = None
    #: delete: drop the object's revision history too.
    drop_revisions: bool = False


class Transaction(Protocol):
    async def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None:
        """Read for update: concurrent writers of the same object wait their turn."""

    async def write(self, change: Change) -> Event:
        """Apply ``change`` and record its event, which is returned: it carries the
        new resourceVersion and the object as stored.

        Raises StoreConflict when the name is taken (insert) or the stored
        resourceVersion is no longer ``expected_rv`` (update, delete)."""

    async def append_audit(self, records: Sequence[AuditRecord]) -> list[AuditEntry]:
        """Append ``records`` to the audit log's hash chain, in this transaction, as
        its last statements: appends of concurrent transactions (any process) wait
        for each other, so the chain has one order and no fork."""


class Store(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    async def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None: ...

    async def current_resource_version(self) -> int: ...

    async def list_page(
        self, kind: str, namespace: str, after: tuple[str, str] | None, limit: int
    ) -> list[pb.Resource]:
        """Objects of a kind ordered by (namespace, name), after the given key."""

    async def events_after(self, resource_version: int, limit: int) -> list[Event]: ...

    async def compacted_resource_version(self) -> int:
        """Events at or below this resourceVersion are gone."""

    async def compact(self, keep_events: int, older_than_s: float) -> int: ...

    async def list_revisions(self, uid: str) -> list[Revision]: ...

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]: ...

    async def audit_head(self) -> int:
        """How many entries the audit log holds (the newest entry's seq)."""

    def changes(self) -> AsyncIterator[int]:
        """Yields when a writer (any process) committed events: the newest
        resourceVersion committed, or 0 when unknown."""

    def on_commit(self, callback: Callable[[list[Event]], None]) -> None:
        """Called after each local commit that wrote events, with those events."""

    async def close(self) -> None: ...
