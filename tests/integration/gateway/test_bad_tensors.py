"""Tensors whose data does not match their shapes are refused at the gateway with
INVALID_ARGUMENT (REST: 400) naming the input; none of them reaches the model.

Every gRPC case goes down both of the gateway's paths: as is, HAProxy's Lua checks
it; padded with a 30 KB request id, the message no longer fits HAProxy's buffer and
the gateway's Python checks it. Both must answer the same."""

from __future__ import annotations

import json

import aiohttp
import grpc
import pytest
import pytest_asyncio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from matrixinfer.gateway.main import GatewayApp

ROW = b"\x00\x00\x80\x3f" * 4  # one row of four FP32 ones


@pytest_asyncio.fixture
async def gateway(iris_gateway: GatewayApp) -> GatewayApp:
    return iris_gateway


def _request(
    shape: list[int], raw: list[bytes] | None = None
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="iris")
    request.inputs.add(name="X", datatype="FP32", shape=shape)
    request.raw_input_contents.extend(raw or [])
    return request


def _typed(values: list[float]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(values)
    return request


CASES = {
    "short raw buffer": (
        _request([1, 4], [ROW[:7]]),
        "input 'X': 7 bytes of raw data for shape [1,4] FP32, expected 16",
    ),
    "long raw buffer": (
        _request([1, 4], [ROW + b"\x00" * 4]),
        "input 'X': 20 bytes of raw data for shape [1,4] FP32, expected 16",
    ),
    "negative dimension": (
        _request([-1, 4], [ROW]),
        "input 'X': shape [-1,4] has a negative dimension",
    ),
    "too few typed values": (
        _typed([1.0, 2.0, 3.0]),
        "input 'X': 3 FP32 values for shape [1,4], expected 4",
    ),
    "more raw buffers than inputs": (
        _request([1, 4], [ROW, ROW]),
        "2 raw_input_contents for 1 inputs",
    ),
    "no data": (_request([1, 4]), "input 'X' has no data"),
}


async def _call(
    address: str, request: service_pb2.ModelInferRequest
) -> service_pb2.ModelInferResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response: service_pb2.ModelInferResponse = await stub.ModelInfer(
            request, timeout=10
        )
        return response


async def test_bad_grpc_tensors_are_invalid_argument_naming_the_input(
    gateway: GatewayApp,
) -> None:
    answers: dict[tuple[str, str], tuple[grpc.StatusCode, str]] = {}
    for case, (request, _) in CASES.items():
        for path in ("haproxy", "python"):
            sent = service_pb2.ModelInferRequest()
            sent.CopyFrom(request)
            if path == "python":
                sent.id = "x" * 30_000
            try:
                await _call(gateway.address, sent)
                answers[case, path] = (grpc.StatusCode.OK, "")
            except grpc.aio.AioRpcError as e:
                answers[case, path] = (e.code(), e.details() or "")
    assert answers == {
        (case, path): (grpc.StatusCode.INVALID_ARGUMENT, message)
        for case, (_, message) in CASES.items()
        for path in ("haproxy", "python")
    }
    # Good tensors still pass both paths.
    for padding in ("", "x" * 30_000):
        request = _request([1, 4], [ROW])
        request.id = padding
        response = await _call(gateway.address, request)
        assert [o.name for o in response.outputs] == ["label", "probabilities"]
        assert response.id == padding


async def test_an_empty_batch_is_the_clients_error(gateway: GatewayApp) -> None:
    # Shape [0, 4] is well formed for the gateway's check; Triton refuses it.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(gateway.address, _request([0, 4], [b""]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'X'" in caught.value.details()


async def _post_binary(
    url: str, inputs: list[dict[str, object]], data: bytes
) -> tuple[int, dict[str, object]]:
    header = json.dumps({"inputs": inputs}).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{url}/v2/models/iris/infer",
            data=header + data,
            headers={
                "Inference-Header-Content-Length": str(len(header)),
                "Content-Type": "application/octet-stream",
            },
        ) as response:
            return response.status, await response.json(content_type=None)


def _binary_input(size: int, shape: list[int] | None = None) -> dict[str, object]:
    return {
        "name": "X",
        "shape": shape or [1, 4],
        "datatype": "FP32",
        "parameters": {"binary_data_size": size},
    }


async def test_rest_binary_data_is_checked_against_the_shape(
    gateway: GatewayApp,
) -> None:
    url = gateway.http_url
    status, body = await _post_binary(url, [_binary_input(7)], ROW[:7])
    assert (status, body) == (
        400,
        {"error": "input 'X': binary_data_size 7 for shape [1,4] FP32, expected 16"},
    )
    status, body = await _post_binary(url, [_binary_input(16)], ROW + ROW[:4])
    assert (status, body) == (
        400,
        {"error": "the body holds 20 bytes of binary data, the inputs declare 16"},
    )
    status, body = await _post_binary(url, [_binary_input(16)], ROW)
    assert status == 200
    outputs = body["outputs"]
    assert isinstance(outputs, list)
    assert [o["name"] for o in outputs] == ["label", "probabilities"]
