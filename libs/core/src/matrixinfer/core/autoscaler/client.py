"""The one adapter other services use to reach the autoscaler: Activate with a
deadline, the gateway's ReportLoad stream; gRPC errors become ours."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from matrixinfer.api.v1 import autoscaler_pb2 as apb
from matrixinfer.api.v1 import autoscaler_pb2_grpc
from matrixinfer.core.grpc.errors import peer_errors


class AutoscalerClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_s: float = 2.0) -> None:
        self._stub = autoscaler_pb2_grpc.AutoscalerStub(channel)
        self._timeout_s = timeout_s

    async def activate(self, namespace: str, model_infer: str) -> int:
        """Ask for replicas of a ModelInfer at zero; the count it will have."""
        with peer_errors():
            response: apb.ActivateResponse = await self._stub.Activate(
                apb.ActivateRequest(namespace=namespace, model_infer=model_infer),
                timeout=self._timeout_s,
            )
        return response.replicas

    async def report_load(self, reports: AsyncIterator[apb.LoadReport]) -> None:
        """Stream load reports until the stream ends or fails. A long-lived stream
        has no deadline; the channel's keepalive finds a dead autoscaler."""
        with peer_errors():
            await self._stub.ReportLoad(reports)
