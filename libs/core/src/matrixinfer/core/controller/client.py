"""The one adapter other services use to reach the controller: every call has a
deadline (on top of the channel's default), and gRPC errors become ours, so a hung
or failing controller surfaces as DeadlineExceeded / Unavailable in the caller."""

from __future__ import annotations

import grpc

from matrixinfer.api.v1 import controller_pb2 as cpb
from matrixinfer.api.v1 import controller_pb2_grpc
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.grpc.errors import peer_errors


class ControllerClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_s: float = 2.0) -> None:
        self._stub = controller_pb2_grpc.ControllerStub(channel)
        self._timeout_s = timeout_s

    async def get_replicas(
        self, namespace: str, model_infer: str
    ) -> tuple[int, list[pb.Endpoint]]:
        """The desired replica count and the replicas' endpoints."""
        with peer_errors():
            response: cpb.GetReplicasResponse = await self._stub.GetReplicas(
                cpb.GetReplicasRequest(namespace=namespace, model_infer=model_infer),
                timeout=self._timeout_s,
            )
        return response.desired_replicas, list(response.endpoints)

    async def scale(
        self, namespace: str, model_infer: str, replicas: int, reason: str
    ) -> None:
        with peer_errors():
            await self._stub.Scale(
                cpb.ScaleRequest(
                    namespace=namespace,
                    model_infer=model_infer,
                    replicas=replicas,
                    reason=reason[:1024],
                ),
                timeout=self._timeout_s,
            )
