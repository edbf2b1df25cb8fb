"""What the domain needs from the registry, as interfaces. The registry client and
the informer of :mod:`matrixinfer.core.registry` fit them as they are; main wires
them in, so the domain never imports the gRPC client."""

from __future__ import annotations

from typing import Protocol

from matrixinfer.api.v1 import resources_pb2 as pb


class ResourceCache(Protocol):
    """The informer's local copy of the registry's resources (reads only)."""

    def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None: ...

    def items(self, kind: str) -> list[pb.Resource]: ...


class Registry(Protocol):
    """The registry writes (and the one read past the cache) a reconcile makes."""

    async def update_status(self, resource: pb.Resource) -> pb.Resource: ...

    async def update_finalizers(
        self, kind: str, namespace: str, name: str, add: list[str], remove: list[str]
    ) -> pb.Resource | None: ...

    async def model_revision(
        self, namespace: str, name: str, revision: int
    ) -> pb.Model: ...
