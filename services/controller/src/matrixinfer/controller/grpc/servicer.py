"""Controller gRPC servicer: Scale and GetReplicas."""

from __future__ import annotations

import grpc

from matrixinfer.api.v1 import controller_pb2 as cpb
from matrixinfer.api.v1 import controller_pb2_grpc
from matrixinfer.controller.loop import ControllerLoop
from matrixinfer.core.errors import InvalidArgument


class ControllerServicer(controller_pb2_grpc.ControllerServicer):
    def __init__(self, loop: ControllerLoop) -> None:
        self.loop = loop

    async def Scale(
        self, request: cpb.ScaleRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ScaleResponse:
        if request.replicas < 0:
            raise InvalidArgument.field("replicas", "must be 0 or more")
        if len(request.reason) > 1024:
            raise InvalidArgument.field("reason", "at most 1024 characters")
        applied = self.loop.scale(
            request.namespace or "default",
            request.model_infer,
            request.replicas,
            request.reason,
        )
        return cpb.ScaleResponse(replicas=applied)

    async def GetReplicas(
        self, request: cpb.GetReplicasRequest, context: grpc.aio.ServicerContext
    ) -> cpb.GetReplicasResponse:
        endpoints, desired = self.loop.replicas(
            request.namespace or "default", request.model_infer
        )
        return cpb.GetReplicasResponse(endpoints=endpoints, desired_replicas=desired)
