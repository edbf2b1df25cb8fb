"""Composition root of the gateway: registry informer → routing table → the KServe v2
gRPC proxy on one port.

``GatewayApp.start`` is what ``main()`` runs and what tests use in-process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc
from prometheus_client import CollectorRegistry

from matrixinfer.core.grpc.server import RunningServer, serve_forever, start_server
from matrixinfer.core.logging import configure_logging
from matrixinfer.core.metrics import GrpcServerMetrics
from matrixinfer.core.registry.client import RegistryClient
from matrixinfer.core.registry.informer import Informer
from matrixinfer.gateway.balancer import Balancer
from matrixinfer.gateway.proxy import SERVICE, InferenceProxy, Upstreams
from matrixinfer.gateway.routing import RoutingTable, build_table
from matrixinfer.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
KINDS = ["ModelRoute", "ModelServer", "ModelInfer", "Model"]


@dataclass
class Routes:
    """Holds the current table; rebuilt on every registry change."""

    informer: Informer | None = None
    table: RoutingTable = field(default_factory=RoutingTable)
    synced: bool = False

    def rebuild(self, *_: object) -> None:
        informer = self.informer
        if informer is None:
            return
        self.table = build_table(
            [r.model_route for r in informer.items("ModelRoute")],
            [r.model_server for r in informer.items("ModelServer")],
            [r.model_infer for r in informer.items("ModelInfer")],
            [r.model for r in informer.items("Model")],
        )


@dataclass
class GatewayApp:
    settings: GatewaySettings
    channel: grpc.aio.Channel
    informer: Informer
    routes: Routes
    upstreams: Upstreams
    server: RunningServer

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.server.port}"

    @classmethod
    async def start(cls, settings: GatewaySettings) -> GatewayApp:
        channel = grpc.aio.insecure_channel(settings.registry_address)
        routes = Routes()
        informer = Informer(RegistryClient(channel), KINDS, routes.rebuild)
        routes.informer = informer
        upstreams = Upstreams(settings.max_message_bytes)
        proxy = InferenceProxy(
            table=lambda: routes.table,
            upstreams=upstreams,
            balancer=Balancer(),
            default_timeout_s=settings.default_timeout_s,
            max_timeout_s=settings.max_timeout_s,
            ready=lambda: routes.synced,
        )
        try:
            await informer.start()
            server = await start_server(
                settings,
                lambda s: s.add_generic_rpc_handlers((proxy.handler(),)),
                service_names=[SERVICE],
                metrics=GrpcServerMetrics(CollectorRegistry()),
            )
        except BaseException:
            await informer.stop()
            await channel.close()
            raise
        app = cls(settings, channel, informer, routes, upstreams, server)
        asyncio.get_running_loop().create_task(app._mark_synced())
        return app

    async def _mark_synced(self) -> None:
        await self.informer.wait_synced(timeout_s=3600)
        self.routes.rebuild()
        self.routes.synced = True

    async def stop(self, grace_s: float | None = None) -> None:
        await self.server.stop(
            self.settings.grace_period_s if grace_s is None else grace_s
        )
        await self.informer.stop()
        await self.upstreams.close()
        await self.channel.close()


async def _run(settings: GatewaySettings) -> None:
    app = await GatewayApp.start(settings)
    log.info("gateway serving KServe v2 gRPC on %s", app.address)
    try:
        await serve_forever(app.server, settings.grace_period_s)
    finally:
        await app.stop(0)


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, settings.log_json, settings.service_name)
    asyncio.run(_run(settings))


if __name__ == "__main__":
    main()
