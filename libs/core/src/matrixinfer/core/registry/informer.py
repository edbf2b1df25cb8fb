"""A local cache of registry objects kept current by Watch, Kubernetes-style: list,
watch from the list's resourceVersion, relist when the registry says the version is
too old or the stream breaks. Handlers see every change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from matrixinfer.api.envelope import Key, key_of
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.errors import Expired, MatrixInferError
from matrixinfer.core.registry.client import RegistryClient

log = logging.getLogger(__name__)

Handler = Callable[[str, str, pb.Resource], None]  # (kind, event type, object)


class Informer:
    """Subscribers (:meth:`subscribe`, before :meth:`start`) see every change, the
    initial list included, in the order the registry made them."""

    def __init__(self, client: RegistryClient, kinds: list[str]) -> None:
        self._client = client
        self._kinds = kinds
        self._handlers: list[Handler] = []
        self._store: dict[str, dict[Key, pb.Resource]] = {k: {} for k in kinds}
        self._synced: dict[str, asyncio.Event] = {k: asyncio.Event() for k in kinds}
        self._tasks: list[asyncio.Task[None]] = []

    def subscribe(self, handler: Handler) -> None:
        """Call ``handler(kind, event type, object)`` on every change."""
        if self._tasks:
            raise RuntimeError("subscribe before start: the initial list is missed")
        self._handlers.append(handler)

    def _publish(self, kind: str, event_type: str, resource: pb.Resource) -> None:
        for handler in self._handlers:
            handler(kind, event_type, resource)

    def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None:
        return self._store[kind].get((namespace, name))

    def items(self, kind: str) -> list[pb.Resource]:
        return list(self._store[kind].values())

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(kind), name=f"informer-{kind}")
            for kind in self._kinds
        ]

    async def wait_synced(self, timeout_s: float) -> None:
        # Each event in turn under one deadline: no gather future is left behind
        # unretrieved when the wait is cancelled (e.g. the service stops first).
        async with asyncio.timeout(timeout_s):
            for event in self._synced.values():
                await event.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, kind: str) -> None:
        delay = 0.2
        while True:
            try:
                items, version = await self._client.list_all(kind)
                fresh = {key_of(r): r for r in items}
                gone = set(self._store[kind]) - set(fresh)
                for key in gone:
                    self._publish(kind, "DELETED", self._store[kind].pop(key))
                for key, resource in fresh.items():
                    self._store[kind][key] = resource
                    self._publish(kind, "ADDED", resource)
                self._synced[kind].set()
                delay = 0.2
                async for event in self._client.watch(kind, version):
                    if event.type == "BOOKMARK":
                        continue
                    key = key_of(event.object)
                    if event.type == "DELETED":
                        self._store[kind].pop(key, None)
                    else:
                        self._store[kind][key] = event.object
                    self._publish(kind, event.type, event.object)
            except Expired:
                log.info("%s watch expired; relisting", kind)
            except MatrixInferError as e:
                log.warning("%s watch failed (%s); relisting in %.1f s", kind, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception:
                # A bug in a handler or an unexpected client error must not freeze
                # this kind's cache silently: log it and relist.
                log.exception("%s watch broke; relisting in %.1f s", kind, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
