"""A real tritonserver from nvidia-pytriton serving the iris example through the
Python backend with ONNX Runtime, started and stopped by matrixinfer.triton."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc.aio as triton_grpc
from sklearn.datasets import load_iris

from matrixinfer.core.errors import FailedPrecondition
from matrixinfer.triton.config import ServingConfig, Tensor
from matrixinfer.triton.install import find_tritonserver, python_paths
from matrixinfer.triton.python_models import onnx_runtime_model
from matrixinfer.triton.repository import write_model
from matrixinfer.triton.server import TritonProcess, allocate_ports
from tests.conftest import ROOT

IRIS = ServingConfig(
    name="iris",
    backend="python",
    max_batch_size=64,
    inputs=(Tensor("X", "FP32", (4,)),),
    outputs=(Tensor("label", "INT64", (1,), ()), Tensor("probabilities", "FP32", (3,))),
    preferred_batch_sizes=(8, 16),
    max_queue_delay_microseconds=200,
)


def iris_files(onnx: bytes | pathlib.Path) -> dict[str, bytes | pathlib.Path]:
    return {"model.py": onnx_runtime_model(python_paths()).encode(), "model.onnx": onnx}


def triton(tmp_path: pathlib.Path, models: tuple[str, ...]) -> TritonProcess:
    install = find_tritonserver()
    return TritonProcess(
        install=install,
        model_repository=tmp_path / "repo",
        backend_directory=install.prepare_backends(tmp_path / "backends"),
        ports=allocate_ports(),
        log_path=tmp_path / "triton.log",
        models=models,
    )


@pytest_asyncio.fixture
async def iris_server(tmp_path: pathlib.Path) -> AsyncIterator[TritonProcess]:
    write_model(
        tmp_path / "repo", IRIS, 1, iris_files(ROOT / "examples/iris/model.onnx")
    )
    server = triton(tmp_path, ("iris",))
    await server.start()
    try:
        await server.wait_ready(timeout_s=60)
        yield server
    finally:
        await server.stop(grace_s=5)


async def test_iris_classifier_serves_real_predictions(
    iris_server: TritonProcess,
) -> None:
    features, labels = load_iris(return_X_y=True)
    client = triton_grpc.InferenceServerClient(iris_server.grpc_address)

    async def classify(rows: Any) -> tuple[Any, Any]:
        batch = triton_grpc.InferInput("X", [len(rows), 4], "FP32")
        batch.set_data_from_numpy(rows.astype(np.float32))
        result = await client.infer("iris", [batch], client_timeout=30)
        return result.as_numpy("label"), result.as_numpy("probabilities")

    async def counts() -> tuple[int, int]:
        stats = await client.get_inference_statistics("iris", as_json=True)
        model = stats["model_stats"][0]
        requests = int(model["inference_stats"]["success"].get("count", 0))
        return requests, int(model.get("execution_count", 0))

    try:
        requests0, executions0 = await counts()
        # Concurrent requests, so Triton's dynamic batcher combines them.
        parts = await asyncio.gather(
            *(classify(features[i : i + 10]) for i in range(0, 150, 10))
        )
        requests1, executions1 = await counts()
    finally:
        await client.close()
    # Triton's own statistics: 15 requests ran in fewer executions (batches).
    assert requests1 - requests0 == 15
    assert 0 < executions1 - executions0 < 15
    predicted = np.concatenate([p[0] for p in parts])
    probabilities = np.concatenate([p[1] for p in parts])
    assert predicted is not None and probabilities is not None
    assert predicted.shape == (150, 1)  # config dims [1], reshaped from ONNX's [batch]
    assert np.mean(predicted[:, 0] == labels) > 0.95
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


async def test_stop_leaves_no_process(tmp_path: pathlib.Path) -> None:
    write_model(
        tmp_path / "repo", IRIS, 1, iris_files(ROOT / "examples/iris/model.onnx")
    )
    server = triton(tmp_path, ("iris",))
    await server.start()
    await server.wait_ready(timeout_s=60)
    pid = server.pid
    assert pid is not None
    await server.stop(grace_s=5)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # neither the server nor its Python-backend stubs remain


async def test_a_model_triton_refuses_reports_tritons_reason(
    tmp_path: pathlib.Path,
) -> None:
    write_model(tmp_path / "repo", IRIS, 1, iris_files(b"this is not an onnx model"))
    server = triton(tmp_path, ("iris",))
    await server.start()
    try:
        with pytest.raises(FailedPrecondition) as info:
            await server.wait_ready(timeout_s=60)
    finally:
        await server.stop(grace_s=5)
    assert "iris" in info.value.message
    assert "exited" in info.value.message


async def test_server_dies_with_its_owner(tmp_path: pathlib.Path) -> None:
    """A controller killed with SIGKILL cannot stop its servers; they must go anyway."""
    write_model(
        tmp_path / "repo", IRIS, 1, iris_files(ROOT / "examples/iris/model.onnx")
    )
    owner_script = f"""
import asyncio, pathlib, sys
from matrixinfer.triton.install import find_tritonserver
from matrixinfer.triton.server import TritonProcess, allocate_ports

async def main():
    install = find_tritonserver()
    tmp = pathlib.Path({str(tmp_path)!r})
    server = TritonProcess(install, tmp / "repo", install.prepare_backends(tmp / "b"),
                           allocate_ports(), tmp / "owned.log", models=("iris",))
    await server.start()
    await server.wait_ready(60)
    print(server.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", owner_script, stdout=asyncio.subprocess.PIPE
    )
    assert owner.stdout is not None
    line = await asyncio.wait_for(owner.stdout.readline(), 60)
    server_pid = int(line)
    os.kill(server_pid, 0)  # running
    owner.kill()
    await owner.wait()
    deadline = time.monotonic() + 30
    while True:
        try:
            os.killpg(server_pid, 0)
        except ProcessLookupError:
            break  # the server and its stubs are gone
        assert time.monotonic() < deadline, "tritonserver outlived its owner"
        await asyncio.sleep(0.1)
