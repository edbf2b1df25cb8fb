"""The one adapter other services use to reach the registry: every registry RPC goes
through here, with deadlines, and gRPC errors become ours."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.errors import NotFound
from matrixinfer.core.grpc.errors import peer_errors


class RegistryClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_s: float = 10.0) -> None:
        self._stub = registry_pb2_grpc.RegistryStub(channel)
        self._timeout_s = timeout_s

    async def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None:
        try:
            with peer_errors():
                resource: pb.Resource = await self._stub.Get(
                    rpb.GetRequest(kind=kind, namespace=namespace, name=name),
                    timeout=self._timeout_s,
                )
        except NotFound:
            return None
        return resource

    async def list_all(self, kind: str) -> tuple[list[pb.Resource], str]:
        items: list[pb.Resource] = []
        token = ""
        version = ""
        with peer_errors():
            while True:
                request = rpb.ListRequest(kind=kind, limit=1000)
                setattr(request, "continue", token)  # noqa: B010 - a keyword
                page = await self._stub.List(request, timeout=self._timeout_s)
                items.extend(page.items)
                version = version or page.resource_version
                token = getattr(page, "continue")
                if not token:
                    return items, version

    async def watch(
        self, kind: str, resource_version: str
    ) -> AsyncIterator[rpb.WatchEvent]:
        call = self._stub.Watch(
            rpb.WatchRequest(
                kind=kind, resource_version=resource_version, allow_bookmarks=True
            )
        )
        try:
            with peer_errors():
                async for event in call:
                    yield event
        finally:
            call.cancel()

    async def update_status(self, resource: pb.Resource) -> pb.Resource:
        with peer_errors():
            updated: pb.Resource = await self._stub.UpdateStatus(
                rpb.UpdateStatusRequest(resource=resource), timeout=self._timeout_s
            )
        return updated

    async def update_finalizers(
        self, kind: str, namespace: str, name: str, add: list[str], remove: list[str]
    ) -> pb.Resource | None:
        try:
            with peer_errors():
                updated: pb.Resource = await self._stub.UpdateFinalizers(
                    rpb.UpdateFinalizersRequest(
                        kind=kind,
                        namespace=namespace,
                        name=name,
                        add=add,
                        remove=remove,
                    ),
                    timeout=self._timeout_s,
                )
        except NotFound:
            return None  # removing our last finalizer deleted it: nothing left
        return updated

    async def model_revision(
        self, namespace: str, name: str, revision: int
    ) -> pb.Model:
        with peer_errors():
            response = await self._stub.ListRevisions(
                rpb.ListRevisionsRequest(namespace=namespace, name=name),
                timeout=self._timeout_s,
            )
        for item in response.revisions:
            if item.revision == revision:
                model: pb.Model = item.model
                return model
        raise NotFound(f"Model {namespace}/{name} has no revision {revision}")
