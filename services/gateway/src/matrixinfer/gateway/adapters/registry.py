"""The registry, as the gateway sees it: its informer's copy of the ModelRoutes,
ModelServers, ModelInfers and ApiKeys, rebuilt into a routing table and an API key
cache on every change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from matrixinfer.core.registry.informer import Informer
from matrixinfer.gateway.domain.auth import ApiKeyRecord, InMemoryApiKeyStore
from matrixinfer.gateway.domain.routing import RoutingTable, build_table

#: The kinds the informer watches.
KINDS = ["ModelRoute", "ModelServer", "ModelInfer", "ApiKey"]


@dataclass
class Routes:
    """Holds the current table; rebuilt on every registry change."""

    informer: Informer
    table: RoutingTable = field(default_factory=RoutingTable)
    api_keys: InMemoryApiKeyStore = field(default_factory=InMemoryApiKeyStore)
    synced: bool = False
    #: The newest table, not yet published while the data plane applies it; the
    #: data plane publishes it as ``table`` once HAProxy runs it, so whatever sees
    #: a route in ``table`` can reach it through HAProxy.
    pending: RoutingTable = field(default_factory=RoutingTable)
    pending_keys: dict[str, ApiKeyRecord] = field(default_factory=dict)
    deferred: bool = False
    #: Told about each new table (the gateway drops state of replicas that went;
    #: the data plane renders it).
    on_rebuild: list[Callable[[RoutingTable], None]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def changed(self) -> None:
        """Returns after the next rebuild (held requests wait on this)."""
        await self._changed.wait()

    def rebuild(self, *_: object) -> None:
        informer = self.informer
        self.pending = build_table(
            [r.model_route for r in informer.items("ModelRoute")],
            [r.model_server for r in informer.items("ModelServer")],
            [r.model_infer for r in informer.items("ModelInfer")],
        )
        self.pending_keys = {
            key.metadata.name: ApiKeyRecord(
                key_id=key.metadata.name,
                hash=key.spec.hash,
                subject=key.spec.subject,
                scopes=frozenset(key.spec.scopes),
                tenant=key.spec.tenant or None,
                revoked=key.spec.revoked,
                expires_at_s=_epoch_s(key.spec.expires_at),
            )
            for key in (r.api_key for r in informer.items("ApiKey"))
        }
        for callback in self.on_rebuild:
            callback(self.pending)
        if not self.deferred:
            self.publish(self.pending, self.pending_keys)

    def publish(
        self, table: RoutingTable, keys: dict[str, ApiKeyRecord] | None = None
    ) -> None:
        self.table = table
        if keys is not None:
            self.api_keys.records = keys
        # Wake everyone waiting, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()


def _epoch_s(rfc3339: str) -> float | None:
    if not rfc3339:
        return None
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
