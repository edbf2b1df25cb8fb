"""The registry and controller the benchmarks run on, in their own process."""

from __future__ import annotations

import pathlib

import grpc

from matrixinfer.controller.main import ControllerApp
from matrixinfer.controller.runtimes.fake import FakeRuntime
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.registry.main import RegistryApp
from matrixinfer.registry.settings import RegistrySettings


async def start_platform(
    workdir: pathlib.Path, fake: bool, gpus: list[int] | None = None
) -> tuple[RegistryApp, ControllerApp, grpc.aio.Channel]:
    """``gpus``: the controller's GPU inventory (bench.gpu_check)."""
    registry = await RegistryApp.start(
        RegistrySettings(
            database_url=f"sqlite+aiosqlite:///{workdir}/registry.db",
            grpc_port=0,
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
