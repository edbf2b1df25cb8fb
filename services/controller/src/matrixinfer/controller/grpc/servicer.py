"""Controller gRPC servicer: Scale, GetReplicas and GetLogs. It checks and converts
messages; :class:`matrixinfer.controller.domain.service.ControllerService` does the
work."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from matrixinfer.api.names import SUBDOMAIN_MAX_LENGTH, is_dns1123_label
from matrixinfer.api.v1 import controller_pb2 as cpb
from matrixinfer.api.v1 import controller_pb2_grpc
from matrixinfer.controller.domain.service import ControllerService
from matrixinfer.core.errors import InvalidArgument


def _is_name(value: str) -> bool:
    """A DNS-1123 label's characters, up to a subdomain's length (no dots)."""
    return is_dns1123_label(value, max_length=SUBDOMAIN_MAX_LENGTH)


class ControllerServicer(controller_pb2_grpc.ControllerServicer):
    def __init__(self, service: ControllerService) -> None:
        self.service = service

    async def Scale(
        self, request: cpb.ScaleRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ScaleResponse:
        if request.replicas < 0:
            raise InvalidArgument.field("replicas", "must be 0 or more")
        if len(request.reason) > 1024:
            raise InvalidArgument.field("reason", "at most 1024 characters")
        applied = self.service.scale(
            request.namespace or "default",
            request.model_infer,
            request.replicas,
            request.reason,
        )
        return cpb.ScaleResponse(replicas=applied)

    async def GetReplicas(
        self, request: cpb.GetReplicasRequest, context: grpc.aio.ServicerContext
    ) -> cpb.GetReplicasResponse:
        endpoints, desired = self.service.replicas(
            request.namespace or "default", request.model_infer
        )
        return cpb.GetReplicasResponse(endpoints=endpoints, desired_replicas=desired)

    async def GetLogs(
        self, request: cpb.GetLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.LogChunk]:
        namespace = request.namespace or "default"
        for field, value, required in (
            ("namespace", namespace, True),
            ("model_infer", request.model_infer, True),
            ("replica", request.replica, False),
        ):
            if (value or required) and not _is_name(value):
                raise InvalidArgument.field(
                    field,
                    "required" if not value else "must be a DNS-1123 name",
                )
        tail: int | None = None
        if request.HasField("tail_lines"):
            if request.tail_lines < 0:
                raise InvalidArgument.field("tail_lines", "must be 0 or more")
            tail = request.tail_lines
        async for chunk in self.service.logs(
            namespace, request.model_infer, request.replica, tail, request.follow
        ):
            yield cpb.LogChunk(replica=chunk.replica, lines=chunk.lines)
