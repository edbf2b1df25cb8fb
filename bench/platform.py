"""The registry and controller the benchmarks run on, in their own process, and
waiting on what they report."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Callable

import grpc

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.controller.main import ControllerApp
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.gateway.main import GatewayApp
from matrixinfer.registry.main import RegistryApp
from matrixinfer.registry.settings import RegistrySettings
from tests.fakes.controller_runtime import FakeRuntime


async def start_platform(
    workdir: pathlib.Path, fake: bool, gpus: list[int] | None = None
) -> tuple[RegistryApp, ControllerApp, grpc.aio.Channel]:
    """``gpus``: the controller's GPU inventory (bench.gpu_check)."""
    registry = await RegistryApp.start(
        RegistrySettings(
            database_url=f"sqlite+aiosqlite:///{workdir}/registry.db",
            grpc_port=0,
            kube_port=0,
            log_level="WARNING",
        )
    )
    controller = await ControllerApp.start(
        ControllerSettings(
            registry_address=registry.address,
            grpc_port=0,
            state_dir=workdir / "controller",
            drain_s=0.5,
            log_level="WARNING",
            workers=8 if fake else 4,
            gpus=gpus or [],
        ),
        runtime=FakeRuntime() if fake else None,
    )
    return registry, controller, grpc.aio.insecure_channel(registry.address)


async def stop(
    registry: RegistryApp, controller: ControllerApp, channel: grpc.aio.Channel
) -> None:
    await channel.close()
    await controller.stop(0)
    await registry.stop(0)


async def wait_for(
    stub: registry_pb2_grpc.RegistryStub,
    name: str,
    predicate: Callable[[pb.ModelInfer], bool],
    timeout_s: float = 300,
) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            resource = await stub.Get(
                rpb.GetRequest(kind="ModelInfer", name=name), timeout=5
            )
            if predicate(resource.model_infer):
                return time.monotonic()
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{name} did not get there in {timeout_s} s")


def ready(count: int) -> Callable[[pb.ModelInfer], bool]:
    return lambda i: i.status.ready_replicas >= count


async def routed(
    gateway: GatewayApp, model: str, replicas: int, timeout_s: float = 60
) -> None:
    """Until the gateway routes ``model`` to ``replicas`` replicas."""
    deadline = time.monotonic() + timeout_s
    while gateway.routes.table.routed_replicas(model) < replicas:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway never routed {model}")
        await asyncio.sleep(0.05)
