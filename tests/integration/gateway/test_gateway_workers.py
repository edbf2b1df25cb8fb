"""Several gateway processes on one port: every connection is served, whichever
worker the kernel gives it to, and SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np
import tritonclient.grpc.aio as triton_aio

from tests.integration.conftest import Platform, iris_manifests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = pathlib.Path(f"/proc/{entry}/stat").read_text()
                stat = text.rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


async def test_two_workers_share_the_ports(platform: Platform) -> None:
    await platform.apply(iris_manifests())
    await platform.wait_for(lambda i: i is not None and i.status.ready_replicas == 1)
    grpc_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "MATRIXINFER_GATEWAY_REGISTRY_ADDRESS": platform.registry.address,
        "MATRIXINFER_GATEWAY_GRPC_PORT": str(grpc_port),
        "MATRIXINFER_GATEWAY_HTTP_PORT": str(http_port),
        "MATRIXINFER_GATEWAY_WORKERS": "2",
        "MATRIXINFER_GATEWAY_AUTH_MODE": "off",
        "MATRIXINFER_GATEWAY_LOG_LEVEL": "WARNING",
    }
    gateway = subprocess.Popen([sys.executable, "-m", "matrixinfer.gateway"], env=env)
    tensor = triton_aio.InferInput("X", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    try:
        served = 0
        for _ in range(600):  # both workers start and learn the route
            client = triton_aio.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            try:
                result = await client.infer("iris", [tensor], client_timeout=5)
                labels = result.as_numpy("label")
                assert labels is not None and labels.reshape(-1).tolist() == [2]
                served += 1
                if served == 20:
                    break
            except Exception:  # not up yet: only the count of successes matters
                await asyncio.sleep(0.1)
            finally:
                await client.close()
        assert served == 20
        assert len(children(gateway.pid)) >= 1  # the second worker (and its helpers)
    finally:
        workers = children(gateway.pid)
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=30) == 0
    for pid in workers:
        for _ in range(100):
            try:
                state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]
            except OSError:
                break  # gone
            if state.split()[0] == "Z":
                break  # exited, waiting to be reaped
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"worker {pid} outlived the gateway")
