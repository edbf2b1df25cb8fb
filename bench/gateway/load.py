"""The Python load generators of bench.gateway (latency at one request at a time),
in their own module so a spawned process can import them (the benchmark's
``__main__`` cannot be)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from collections.abc import Awaitable, Callable

import aiohttp
import grpc
import numpy as np
from tritonclient.grpc import service_pb2

PATH = "/inference.GRPCInferenceService/ModelInfer"
ROW = [6.7, 3.0, 5.2, 2.3]
Result = tuple[int, int, float, float]


def request_bytes(model: str = "iris") -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.array([ROW], np.float32).tobytes())
    raw: bytes = request.SerializeToString()
    return raw


def rest_body() -> bytes:
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    return json.dumps(body).encode()


async def _drive(
    one: Callable[[], Awaitable[None]], concurrency: int, seconds: float
) -> tuple[int, int, list[float]]:
    latencies: list[float] = []
    failures = 0
    await one()  # connect and warm up
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal failures
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                await one()
                latencies.append(time.perf_counter() - started)
            except (grpc.aio.AioRpcError, aiohttp.ClientError, AssertionError):
                failures += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), failures, latencies


def _summary(count: int, failures: int, latencies: list[float]) -> Result:
    latencies.sort()
    if not latencies:
        return count, failures, 0.0, 0.0
    return (
        count,
        failures,
        latencies[len(latencies) // 2],
        latencies[int(len(latencies) * 0.99)],
    )


def load(
    address: str,
    concurrency: int,
    seconds: float,
    out: multiprocessing.Queue[Result],
    api_key: str = "",
) -> None:
    """gRPC: the same pre-serialized request from ``concurrency`` tasks on one
    channel for ``seconds``; puts (count, failures, p50 s, p99 s) on ``out``."""

    async def run() -> tuple[int, int, list[float]]:
        payload = request_bytes()
        metadata = (("x-api-key", api_key),) if api_key else ()
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(PATH)

            async def one() -> None:
                await call(payload, timeout=10, metadata=metadata)

            return await _drive(one, concurrency, seconds)

    out.put(_summary(*asyncio.run(run())))


def load_rest(
    url: str,
    concurrency: int,
    seconds: float,
    out: multiprocessing.Queue[Result],
    api_key: str = "",
) -> None:
    """REST: the KServe v2 JSON request (as curl would send it) over keep-alive
    connections, ``concurrency`` at a time."""

    async def run() -> tuple[int, int, list[float]]:
        body = rest_body()
        headers = {"content-type": "application/json"}
        if api_key:
            headers["x-api-key"] = api_key
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> None:
                async with session.post(
                    f"{url}/v2/models/iris/infer", data=body, headers=headers
                ) as response:
                    await response.read()
                    assert response.status == 200, response.status

            return await _drive(one, concurrency, seconds)

    out.put(_summary(*asyncio.run(run())))
