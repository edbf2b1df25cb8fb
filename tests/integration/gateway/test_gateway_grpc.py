"""Unchanged tritonclient (sync and aio) against the gateway, with real Triton
replicas started by the controller from the registry's manifests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as triton_sync
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from matrixinfer.gateway.main import GatewayApp
from tests.integration.conftest import (
    Platform,
)

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


@pytest_asyncio.fixture
async def gateway(iris_gateway: GatewayApp) -> str:
    return iris_gateway.address


def _infer_input() -> triton_aio.InferInput:
    tensor = triton_aio.InferInput("X", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    return tensor


async def test_tritonclient_aio_through_the_gateway(gateway: str) -> None:
    client = triton_aio.InferenceServerClient(gateway)
    try:
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert await client.is_model_ready("iris")
        metadata = await client.get_model_metadata("iris", as_json=True)
        assert [i["name"] for i in metadata["inputs"]] == ["X"]
        config = await client.get_model_config("iris", as_json=True)
        assert config["config"]["max_batch_size"] == 64
        result = await client.infer("iris", [_infer_input()])
        labels = result.as_numpy("label")
        assert labels is not None and labels.reshape(-1).tolist() == [0, 2]
        stats = await client.get_inference_statistics("iris", as_json=True)
        assert stats["model_stats"][0]["name"] == "iris"
    finally:
        await client.close()


async def test_tritonclient_sync_and_streaming(gateway: str) -> None:
    def sync_calls() -> list[int]:
        client = triton_sync.InferenceServerClient(gateway)
        try:
            tensor = triton_sync.InferInput("X", list(ROWS.shape), "FP32")
            tensor.set_data_from_numpy(ROWS)
            labels = client.infer("iris", [tensor]).as_numpy("label")
            assert labels is not None
            return [int(v) for v in labels.reshape(-1)]
        finally:
            client.close()

    assert await asyncio.to_thread(sync_calls) == [0, 2]

    client = triton_aio.InferenceServerClient(gateway)

    async def requests() -> AsyncIterator[dict[str, object]]:
        for i in range(3):
            yield {
                "model_name": "iris",
                "inputs": [_infer_input()],
                "request_id": str(i),
            }

    try:
        seen = []
        async for result, error in client.stream_infer(requests()):
            assert error is None
            labels = result.as_numpy("label")
            assert labels is not None
            seen.append(labels.reshape(-1).tolist())
            if len(seen) == 3:
                break
        assert seen == [[0, 2]] * 3
    finally:
        await client.close()


async def test_refused_and_unknown(gateway: str) -> None:
    client = triton_aio.InferenceServerClient(gateway)
    try:
        with pytest.raises(InferenceServerException) as info:
            await client.load_model("iris")
        assert "PERMISSION_DENIED" in str(info.value.status())
        with pytest.raises(InferenceServerException) as info:
            await client.register_system_shared_memory(
                "triton_python_backend_shm_region_1", "/x", 8
            )
        assert "PERMISSION_DENIED" in str(info.value.status())
        with pytest.raises(InferenceServerException) as info:
            await client.infer("no-such-model", [_infer_input()])
        assert "NOT_FOUND" in str(info.value.status())
    finally:
        await client.close()


async def test_malformed_request_never_reaches_triton(gateway: str) -> None:
    async with grpc.aio.insecure_channel(gateway) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"\x0a\x05ab", timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        ready = await stub.ModelReady(
            service_pb2.ModelReadyRequest(name="iris"), timeout=5
        )
        assert ready.ready


async def test_registry_down_still_serves(platform: Platform, gateway: str) -> None:
    await platform.registry.stop(0)
    client = triton_aio.InferenceServerClient(gateway)
    try:
        result = await client.infer("iris", [_infer_input()])
        labels = result.as_numpy("label")
        assert labels is not None and labels.reshape(-1).tolist() == [0, 2]
    finally:
        await client.close()
