"""The one adapter other services use to reach the registry: every registry RPC goes
through here, with deadlines, and gRPC errors become ours."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.errors import MatrixInferError, NotFound
from matrixinfer.core.grpc.errors import error_for_status


def _translate(error: grpc.aio.AioRpcError) -> MatrixInferError:
    return error_for_status(error.code(), error.details() or "")


class RegistryClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_s: float = 10.0) -> None:
        self._stub = registry_pb2_grpc.RegistryStub(channel)
        self._timeout_s = timeout_s

    async def get(self, kind: str, namespace: str, name: str) -> pb.Resource | None:
        try:
            resource: pb.Resource = await self._stub.Get(
                rpb.GetRequest(kind=kind, namespace=namespace, name=name),
                timeout=self._timeout_s,
            )
            return resource
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise _translate(e) from e

    async def list_all(self, kind: str) -> tuple[list[pb.Resource], str]:
        items: list[pb.Resource] = []
        token = ""
        version = ""
        try:
            while True:
                request = rpb.ListRequest(kind=kind, limit=1000)
                setattr(request, "continue", token)  # noqa: B010 - a keyword
                page = await self._stub.List(request, timeout=self._timeout_s)
                items.extend(page.items)
                version = version or page.resource_version
                token = getattr(page, "continue")
                if not token:
                    return items, version
        except grpc.aio.AioRpcError as e:
            raise _translate(e) from e

    async def watch(
        self, kind: str, resource_version: str
    ) -> AsyncIterator[rpb.WatchEvent]:
        call = self._stub.Watch(
            rpb.WatchRequest(
                kind=kind, resource_version=resource_version, allow_bookmarks=True
            )
        )
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as e:
            raise _translate(e) from e
        finally:
            call.cancel()

    async def update_status(self, resource: pb.Resource) -> pb.Resource:
        try:
            updated: pb.Resource = await self._stub.UpdateStatus(
                rpb.UpdateStatusRequest(resource=resource), timeout=self._timeout_s
            )
            return updated
        except grpc.aio.AioRpcError as e:
            raise _translate(e) from e

    async def update_finalizers(
        self, kind: str, namespace: str, name: str, add: list[str], remove: list[str]
    ) -> pb.Resource | None:
        try:
            updated: pb.Resource = await self._stub.UpdateFinalizers(
                rpb.UpdateFinalizersRequest(
                    kind=kind, namespace=namespace, name=name, add=add, remove=remove
                ),
                timeout=self._timeout_s,
            )
            return updated
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None  # removing our last finalizer deleted it: nothing left
            raise _translate(e) from e

    async def model_revision(
        self, namespace: str, name: str, revision: int
    ) -> pb.Model:
        try:
            response = await self._stub.ListRevisions(
                rpb.ListRevisionsRequest(namespace=namespace, name=name),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError as e:
            raise _translate(e) from e
        for item in response.revisions:
            if item.revision == revision:
                model: pb.Model = item.model
                return model
        raise NotFound(f"Model {namespace}/{name} has no revision {revision}")
