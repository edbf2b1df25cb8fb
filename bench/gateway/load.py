"""The load generator of bench.gateway, in its own module so a spawned process can
import it (the benchmark's ``__main__`` cannot be)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

PATH = "/inference.GRPCInferenceService/ModelInfer"


def request_bytes() -> bytes:
    request = service_pb2.ModelInferRequest(model_name="iris")
    request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(
        np.array([[6.7, 3.0, 5.2, 2.3]], np.float32).tobytes()
    )
    raw: bytes = request.SerializeToString()
    return raw


def load(
    address: str,
    concurrency: int,
    seconds: float,
    out: multiprocessing.Queue[tuple[int, int, float, float]],
) -> None:
    """Send the same request from ``concurrency`` tasks for ``seconds``; put (count,
    failures, p50 s, p99 s) on ``out``."""

    async def run() -> tuple[int, int, list[float]]:
        payload = request_bytes()
        latencies: list[float] = []
        failures = 0
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(PATH)
            await call(payload, timeout=10)  # connect and warm up
            deadline = time.monotonic() + seconds

            async def worker() -> None:
                nonlocal failures
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    try:
                        await call(payload, timeout=10)
                        latencies.append(time.perf_counter() - started)
                    except grpc.aio.AioRpcError:
                        failures += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(latencies), failures, latencies

    count, failures, latencies = asyncio.run(run())
    latencies.sort()
    out.put(
        (
            count,
            failures,
            latencies[len(latencies) // 2],
            latencies[int(len(latencies) * 0.99)],
        )
    )
