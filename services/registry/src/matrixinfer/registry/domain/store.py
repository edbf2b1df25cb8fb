"""The storage interface the domain needs; ``matrixinfer.registry.db`` implements it.

Writes happen inside a transaction. ``next_resource_version`` hands out the global,
gap-free resourceVersion and serializes committing writers, so resourceVersions are
in commit order and a watcher reading "events after N" never misses one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from matrixinfer.api.v1 import resources_pb2 as pb


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


class Transaction(Protocol):
    async def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None: ...

    async def next_resource_version(self) -> int: ...

    async def insert(self, kind: str, resource: pb.Resource) -> None:
        """Raises StoreConflict when the name is taken."""

    async def update(self, kind: str, resource: pb.Resource, expected_rv: int) -> None:
        """Raises StoreConflict unless the stored resourceVersion is ``expected_rv``."""

    async def delete(
        self, kind: str, namespace: str, name: str, expected_rv: int
    ) -> None:
        """Raises StoreConflict unless the stored resourceVersion is ``expected_rv``."""

    async def add_event(self, event: Event) -> None: ...

    async def add_revision(
        self, uid: str, kind: str, namespace: str, name: str, revision: Revision
    ) -> None: ...

    async def delete_revisions(self, uid: str) -> None: ...


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

    def changes(self) -> AsyncIterator[None]:
        """Yields whenever another writer (any process) may have committed events."""

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Called after each local commit that wrote events."""

    async def close(self) -> None: ...
