"""Composition root of the autoscaler: settings → registry informer (policies),
adapters (controller, gateway reports, Triton, Prometheus, metrics) → the domain's
loop → gRPC servicer and server (Autoscaler service).

``AutoscalerApp.start`` is what ``main()`` runs and what tests use in-process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
import grpc
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from matrixinfer.api.v1 import autoscaler_pb2, autoscaler_pb2_grpc
from matrixinfer.autoscaler.adapters.controller import controller_client
from matrixinfer.autoscaler.adapters.gateway import GatewayLoad
from matrixinfer.autoscaler.adapters.metrics import AutoscalerMetrics
from matrixinfer.autoscaler.adapters.prometheus import PrometheusQuery
from matrixinfer.autoscaler.adapters.triton import TritonScraper
from matrixinfer.autoscaler.domain.loop import Autoscaler
from matrixinfer.autoscaler.grpc.auth import POLICY
from matrixinfer.autoscaler.grpc.servicer import AutoscalerServicer
from matrixinfer.autoscaler.settings import AutoscalerSettings
from matrixinfer.core.grpc.auth import CallerAuth
from matrixinfer.core.grpc.channel import create_channel
from matrixinfer.core.grpc.server import RunningServer, run_service, start_server
from matrixinfer.core.grpc.tls import client_tls
from matrixinfer.core.metrics import (
    GrpcServerMetrics,
    MetricsServer,
    start_metrics_server,
)
from matrixinfer.core.registry.client import RegistryClient
from matrixinfer.core.registry.informer import Informer
from matrixinfer.core.tracing import setup_tracing

log = logging.getLogger(__name__)
SERVICE_NAME = autoscaler_pb2.DESCRIPTOR.services_by_name["Autoscaler"].full_name
KINDS = ["AutoscalingPolicy", "ModelInfer"]


@dataclass
class AutoscalerApp:
    settings: AutoscalerSettings
    registry_channel: grpc.aio.Channel
    controller_channel: grpc.aio.Channel
    session: aiohttp.ClientSession
    informer: Informer
    autoscaler: Autoscaler
    server: RunningServer
    metrics: CollectorRegistry
    metrics_server: MetricsServer | None = None
    tracer_provider: TracerProvider | None = None

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.server.port}"

    @classmethod
    async def start(cls, settings: AutoscalerSettings) -> AutoscalerApp:
        # Deadlines, keepalive and bounded retries on every call (core's factory).
        tracer = (
            setup_tracing(settings.service_name, settings.otlp_endpoint)
            if settings.otlp_endpoint
            else None
        )
        files = settings.tls_files()
        registry_channel = create_channel(
            settings.registry_address,
            tracer_provider=tracer,
            tls=client_tls(files, "registry"),
        )
        controller_channel = create_channel(
            settings.controller_address,
            tracer_provider=tracer,
            tls=client_tls(files, "controller"),
        )
        enforce = settings.auth_enforced()
        # Who may call (grpc/auth.py): identities with mTLS, checks when enforced.
        auth = (
            [CallerAuth("autoscaler", enforce=enforce, policy=POLICY)]
            if enforce or files is not None
            else []
        )
        session = aiohttp.ClientSession()
        registry = RegistryClient(registry_channel, settings.call_timeout_s)
        informer = Informer(registry, KINDS)  # read on each tick: no subscriber
        metrics = CollectorRegistry()
        gateways = GatewayLoad(stale_s=settings.report_stale_s)
        autoscaler = Autoscaler(
            informer,
            registry,
            controller_client(controller_channel, settings.call_timeout_s),
            gateways,
            TritonScraper(session, settings.scrape_timeout_s),
            PrometheusQuery(session, settings.prometheus_url, settings.call_timeout_s)
            if settings.prometheus_url
            else None,
            AutoscalerMetrics(metrics),
            tick_s=settings.tick_s,
        )
        servicer = AutoscalerServicer(autoscaler, gateways)
        metrics_server: MetricsServer | None = None
        server: RunningServer | None = None
        try:
            await informer.start()
            server = await start_server(
                settings,
                lambda s: autoscaler_pb2_grpc.add_AutoscalerServicer_to_server(
                    servicer, s
                ),
                service_names=[SERVICE_NAME],
                metrics=GrpcServerMetrics(metrics),
                tracer_provider=tracer,
                interceptors=auth,
            )
            if settings.metrics_port is not None:
                metrics_server = start_metrics_server(
                    settings.metrics_port, metrics, settings.host
                )
        except BaseException:
            if server is not None:
                await server.stop(0)
            await informer.stop()
            await session.close()
            await registry_channel.close()
            await controller_channel.close()
            raise
        autoscaler.start()
        return cls(
            settings,
            registry_channel,
            controller_channel,
            session,
            informer,
            autoscaler,
            server,
            metrics,
            metrics_server,
            tracer,
        )

    async def stop(self, grace_s: float | None = None) -> None:
        await self.server.stop(
            self.settings.grace_period_s if grace_s is None else grace_s
        )
        await self.autoscaler.stop()
        await self.informer.stop()
        if self.metrics_server is not None:
            self.metrics_server.close()
        await self.session.close()
        await self.registry_channel.close()
        await self.controller_channel.close()
        if self.tracer_provider is not None:
            # Flushes the last spans; off the event loop, which may still serve.
            await asyncio.to_thread(self.tracer_provider.shutdown)


def main() -> None:
    settings = AutoscalerSettings()
    run_service(
        settings,
        lambda: AutoscalerApp.start(settings),
        lambda app: (
            f"autoscaler ready on {app.address} (registry "
            f"{settings.registry_address}, controller {settings.controller_address})"
        ),
    )


if __name__ == "__main__":
    main()
