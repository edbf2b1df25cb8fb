"""Priority levels and the queue policy, as the controller writes them into
config.pbtxt, change what a real tritonserver does under saturation: a high-priority
request overtakes queued low ones, a request that waits past the queue timeout is
rejected, and a full queue refuses at once instead of hanging.

The model is deliberately slow (one instance, one request per execution, a fixed
sleep) so that requests queue; it is written by the test, not shipped."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from matrixinfer.triton.config import QueuePolicy, ServingConfig, Tensor
from matrixinfer.triton.install import python_paths
from matrixinfer.triton.repository import write_model
from matrixinfer.triton.server import TritonProcess
from tests.integration.triton.test_triton_process import triton

SLEEP_S = 0.4
SLOW_MODEL = f"""
import sys
import time

# The backend's stub embeds the system Python; numpy comes from our environment.
sys.path[:0] = {python_paths()!r}

import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def execute(self, requests):
        time.sleep({SLEEP_S})
        inputs = [pb_utils.get_input_tensor_by_name(r, "IN") for r in requests]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUT", t.as_numpy())])
            for t in inputs
        ]
"""


def slow(**batching: object) -> ServingConfig:
    return ServingConfig(
        name="slow",
        backend="python",
        max_batch_size=1,  # one request per execution: the rest wait in the queue
        inputs=(Tensor("IN", "INT32", (1,)),),
        outputs=(Tensor("OUT", "INT32", (1,)),),
        **batching,  # type: ignore[arg-type]
    )


@pytest_asyncio.fixture
async def serve(
    tmp_path: pathlib.Path,
) -> AsyncIterator[Callable[[ServingConfig], asyncio.Future[TritonProcess]]]:
    servers: list[TritonProcess] = []

    async def start(config: ServingConfig) -> TritonProcess:
        write_model(tmp_path / "repo", config, 1, {"model.py": SLOW_MODEL.encode()})
        server = triton(tmp_path, ("slow",))
        servers.append(server)
        await server.start()
        await server.wait_ready(timeout_s=60)
        return server

    yield start  # type: ignore[misc]
    for server in servers:
        await server.stop(grace_s=5)


async def _infer(
    client: triton_grpc.InferenceServerClient, value: int, priority: int = 0
) -> int:
    tensor = triton_grpc.InferInput("IN", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    result = await client.infer("slow", [tensor], priority=priority, client_timeout=30)
    out = result.as_numpy("OUT")
    assert out is not None
    return int(out[0][0])


async def test_a_high_priority_request_overtakes_queued_low_ones(serve) -> None:  # type: ignore[no-untyped-def]
    # Two levels; a request that names none is at the low one (2).
    server = await serve(slow(priority_levels=2, default_priority_level=2))
    client = triton_grpc.InferenceServerClient(server.grpc_address)
    finished: list[str] = []

    async def send(label: str, value: int, priority: int = 0) -> None:
        assert await _infer(client, value, priority) == value
        finished.append(label)

    try:
        tasks = [asyncio.create_task(send("low", 0))]  # runs at once, sleeps
        await asyncio.sleep(SLEEP_S / 4)
        tasks += [asyncio.create_task(send("low", i)) for i in range(1, 5)]
        await asyncio.sleep(SLEEP_S / 4)  # four low requests now queued
        tasks += [
            asyncio.create_task(send("high", 10 + i, priority=1)) for i in range(2)
        ]
        await asyncio.gather(*tasks)
    finally:
        await client.close()
    assert finished == ["low", "high", "high", "low", "low", "low", "low"]


async def test_a_request_queued_past_the_timeout_is_rejected(serve) -> None:  # type: ignore[no-untyped-def]
    policy = QueuePolicy(timeout_action="REJECT", default_timeout_microseconds=100_000)
    server = await serve(slow(queue_policy=policy))
    client = triton_grpc.InferenceServerClient(server.grpc_address)
    try:
        first = asyncio.create_task(_infer(client, 1))
        await asyncio.sleep(SLEEP_S / 4)
        with pytest.raises(InferenceServerException) as caught:
            await _infer(client, 2)  # waits behind the first for longer than 100 ms
        assert await first == 1
    finally:
        await client.close()
    assert caught.value.status() == "StatusCode.UNAVAILABLE"
    assert "Request timeout expired" in caught.value.message()


async def test_a_full_queue_refuses_at_once(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(slow(queue_policy=QueuePolicy(max_queue_size=1)))
    client = triton_grpc.InferenceServerClient(server.grpc_address)
    try:
        running = asyncio.create_task(_infer(client, 1))
        await asyncio.sleep(SLEEP_S / 4)
        queued = asyncio.create_task(_infer(client, 2))
        await asyncio.sleep(SLEEP_S / 4)
        with pytest.raises(InferenceServerException) as caught:
            await _infer(client, 3)  # the queue holds one already
        # The refusal came while the first two were still in the model's hands.
        assert not queued.done()
        assert (await running, await queued) == (1, 2)
    finally:
        await client.close()
    assert caught.value.status() == "StatusCode.UNAVAILABLE"
    assert "Exceeds maximum queue size" in caught.value.message()
