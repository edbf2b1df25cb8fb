"""A real registry and a real controller in-process, with real tritonserver replicas
of the iris example."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import grpc
import pytest_asyncio
from opentelemetry.sdk.trace.export import SpanExporter

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.controller.main import ControllerApp
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.core.grpc.channel import create_channel
from matrixinfer.core.grpc.tls import ClientTls
from matrixinfer.gateway.main import GatewayApp
from matrixinfer.gateway.settings import GatewaySettings
from matrixinfer.registry.main import RegistryApp
from tests.conftest import ROOT, registry_settings

IRIS_ONNX = ROOT / "examples/iris/model.onnx"
#: A KServe v2 REST request for iris (one virginica row: label 2).
IRIS_REST_BODY = {
    "inputs": [
        {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [6.7, 3.0, 5.2, 2.3]}
    ]
}


def iris_manifests(uri: str = f"file://{IRIS_ONNX}", **replace: str) -> str:
    text = (ROOT / "examples/iris/manifests.yaml").read_text()
    text = text.replace("file://${IRIS_MODEL}", uri)
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


@dataclass
class Platform:
    registry: RegistryApp
    controller: ControllerApp
    stub: registry_pb2_grpc.RegistryStub

    async def apply(self, manifest: str) -> None:
        await self.stub.Apply(rpb.ApplyRequest(manifest=manifest), timeout=10)

    async def infer_status(self, name: str = "iris") -> pb.ModelInfer | None:
        try:
            resource = await self.stub.Get(
                rpb.GetRequest(kind="ModelInfer", name=name), timeout=5
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        infer: pb.ModelInfer = resource.model_infer
        return infer

    async def wait_for(
        self,
        predicate: Callable[[pb.ModelInfer | None], bool],
        timeout_s: float = 60.0,
        name: str = "iris",
    ) -> pb.ModelInfer | None:
        deadline = time.monotonic() + timeout_s
        infer = await self.infer_status(name)
        while not predicate(infer):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last status: {infer}")
            await asyncio.sleep(0.1)
            infer = await self.infer_status(name)
        return infer


@contextlib.asynccontextmanager
async def running_platform(
    tmp_path: pathlib.Path,
    registry_tls: Mapping[str, object] | None = None,
    admin: ClientTls | None = None,
    **controller_settings: object,
) -> AsyncIterator[Platform]:
    """A registry (SQLite under ``tmp_path``) and a controller with quick drains;
    ``controller_settings`` add to or replace the controller's settings.
    ``registry_tls``: the registry's tls_* settings; ``admin``: what the
    platform's own registry client presents (mTLS)."""
    registry = await RegistryApp.start(
        registry_settings(
            f"sqlite+aiosqlite:///{tmp_path}/registry.db", **(registry_tls or {})
        )
    )
    values: dict[str, object] = {
        "registry_address": registry.address,
        "grpc_port": 0,
        "state_dir": tmp_path / "controller",
        "drain_s": 0.5,
        "stop_grace_s": 3.0,
        "log_json": False,
        "resync_s": 5.0,
    }
    values.update(controller_settings)
    controller = await ControllerApp.start(
        ControllerSettings(**values)  # type: ignore[arg-type]
    )
    channel = (
        create_channel(registry.address, tls=admin)
        if admin is not None
        else grpc.aio.insecure_channel(
            registry.address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
    )
    try:
        yield Platform(registry, controller, registry_pb2_grpc.RegistryStub(channel))
    finally:
        await channel.close()
        await controller.stop(0)
        await registry.stop(0)


@pytest_asyncio.fixture
async def platform(tmp_path: pathlib.Path) -> AsyncIterator[Platform]:
    async with running_platform(tmp_path) as started:
        yield started


async def start_gateway(
    platform: Platform, span_exporter: SpanExporter | None = None, **settings: object
) -> GatewayApp:
    """A gateway on ephemeral ports following this platform's registry (auth off
    unless the test says otherwise)."""
    values: dict[str, object] = {
        "registry_address": platform.registry.address,
        "grpc_port": 0,
        "http_port": 0,
        "log_json": False,
        "auth_mode": "off",
    }
    values.update(settings)
    return await GatewayApp.start(
        GatewaySettings(**values),  # type: ignore[arg-type]
        span_exporter,
    )


async def wait_routed(app: GatewayApp, model: str = "iris", replicas: int = 1) -> None:
    """Until the gateway's table (fed by Watch) reaches ``replicas`` of ``model``."""
    for _ in range(200):
        if app.routes.table.routed_replicas(model) >= replicas:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the gateway never routed {model!r} to {replicas} replica(s)")


@pytest_asyncio.fixture
async def iris_gateway(platform: Platform) -> AsyncIterator[GatewayApp]:
    """A gateway routing iris to one ready replica."""
    app = await start_gateway(platform)
    try:
        await platform.apply(iris_manifests())
        await platform.wait_for(
            lambda i: i is not None and i.status.ready_replicas == 1
        )
        await wait_routed(app)
        yield app
    finally:
        await app.stop(0)


async def haproxy_counts(
    app: GatewayApp, prefix: str = ""
) -> dict[tuple[str, str], int]:
    """HAProxy's request counts (stot) by (proxy, server), for proxies whose name
    starts with ``prefix`` (its runtime API, read now)."""
    rows = await app.dataplane.process.runtime.show_stat()
    return {
        (r["pxname"], r["svname"]): int(r["stot"] or 0)
        for r in rows
        if r["pxname"].startswith(prefix)
    }


async def carried_by(
    app: GatewayApp, prefix: str, send: Callable[[], Awaitable[object]]
) -> list[tuple[str, str]]:
    """The (proxy, server) rows whose counts grew while ``send`` ran."""
    before = await haproxy_counts(app, prefix)
    await send()
    after = await haproxy_counts(app, prefix)
    return [key for key, count in after.items() if count != before.get(key, 0)]
