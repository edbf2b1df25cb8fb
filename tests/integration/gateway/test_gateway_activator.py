"""Scale from zero: a request for a model with no replica is held, the autoscaler is
asked to activate it, and the request is answered once a replica is ready. Load
reports reach the autoscaler. The autoscaler here is a small real gRPC server that
scales through the real controller (the autoscaler service itself is a later step)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from matrixinfer.api.v1 import autoscaler_pb2 as apb
from matrixinfer.api.v1 import autoscaler_pb2_grpc, controller_pb2_grpc
from matrixinfer.api.v1 import controller_pb2 as cpb
from matrixinfer.gateway.main import GatewayApp
from tests.integration.conftest import Platform, iris_manifests, start_gateway


class RecordingAutoscaler(autoscaler_pb2_grpc.AutoscalerServicer):
    def __init__(self, controller_address: str) -> None:
        self.controller_address = controller_address
        self.activations: list[tuple[str, str]] = []
        self.reports: list[apb.LoadReport] = []

    async def Activate(
        self, request: apb.ActivateRequest, context: grpc.aio.ServicerContext
    ) -> apb.ActivateResponse:
        self.activations.append((request.namespace, request.model_infer))
        async with grpc.aio.insecure_channel(self.controller_address) as channel:
            scaled = await controller_pb2_grpc.ControllerStub(channel).Scale(
                cpb.ScaleRequest(
                    namespace=request.namespace,
                    model_infer=request.model_infer,
                    replicas=1,
                    reason="activated",
                )
            )
        return apb.ActivateResponse(replicas=scaled.replicas)

    async def ReportLoad(
        self,
        request_iterator: AsyncIterator[apb.LoadReport],
        context: grpc.aio.ServicerContext,
    ) -> apb.ReportLoadResponse:
        async for report in request_iterator:
            self.reports.append(report)
        return apb.ReportLoadResponse()


def tensor() -> triton_aio.InferInput:
    t = triton_aio.InferInput("X", [1, 4], "FP32")
    t.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    return t


async def gateway_at_zero(platform: Platform, autoscaler: str | None) -> GatewayApp:
    await platform.apply(iris_manifests(**{"replicas: 1": "replicas: 0"}))
    await platform.wait_for(
        lambda i: i is not None and i.status.observed_generation == 1
    )
    app = await start_gateway(platform, autoscaler_address=autoscaler)
    for _ in range(100):
        if "iris" in app.routes.table.routes:
            break
        await asyncio.sleep(0.05)
    return app


async def test_request_at_zero_is_held_activated_and_answered(
    platform: Platform,
) -> None:
    autoscaler = RecordingAutoscaler(platform.controller.address)
    server = grpc.aio.server()
    autoscaler_pb2_grpc.add_AutoscalerServicer_to_server(autoscaler, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    app = await gateway_at_zero(platform, f"127.0.0.1:{port}")
    client = triton_aio.InferenceServerClient(app.address)
    try:
        assert not await client.is_model_ready("iris")
        result = await client.infer("iris", [tensor()], client_timeout=60)
        labels = result.as_numpy("label")
        assert labels is not None and labels.reshape(-1).tolist() == [2]
        assert autoscaler.activations == [("default", "iris")]
        for _ in range(50):  # reports arrive about once a second
            if any(m.arrivals or m.held for r in autoscaler.reports for m in r.models):
                break
            await asyncio.sleep(0.1)
        seen = [
            m for r in autoscaler.reports for m in r.models if m.model_infer == "iris"
        ]
        assert sum(m.arrivals for m in seen) >= 1
    finally:
        await client.close()
        await app.stop(0)
        await server.stop(0)


async def test_held_request_ends_at_its_deadline(platform: Platform) -> None:
    app = await gateway_at_zero(platform, None)  # nobody scales it up
    client = triton_aio.InferenceServerClient(app.address)
    try:
        with pytest.raises(InferenceServerException) as info:
            await client.infer("iris", [tensor()], client_timeout=1.0)
        assert "DEADLINE_EXCEEDED" in str(info.value.status())
        await asyncio.sleep(0.1)
        assert app.tracker.loads.get(("default", "iris")) is None or (
            app.tracker.loads[("default", "iris")].held == 0
        )
    finally:
        await client.close()
        await app.stop(0)
