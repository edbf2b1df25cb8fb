"""Composition root of the gateway: settings → registry informer, autoscaler client,
upstream channels, JWKS fetcher, HAProxy data plane (adapters) → routing table,
balancer, authenticator, load counters (domain) → the KServe v2 gRPC proxy and the
REST/admin HTTP app on the slow-path ports (grpc/, http/), behind HAProxy.

``GatewayApp.start`` is what ``main()`` runs and what tests use in-process.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import grpc
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry

from matrixinfer.core.grpc.channel import create_channel
from matrixinfer.core.grpc.server import (
    RunningServer,
    run_service,
    start_server,
    write_port_file,
)
from matrixinfer.core.grpc.tls import client_tls
from matrixinfer.core.jwks import JwksFetcher
from matrixinfer.core.metrics import GrpcServerMetrics
from matrixinfer.core.pki import REPLICA, identity_name
from matrixinfer.core.ports import free_ports
from matrixinfer.core.registry.client import RegistryClient
from matrixinfer.core.registry.informer import Informer
from matrixinfer.core.tracing import setup_tracing
from matrixinfer.gateway.adapters.autoscaler import (
    AutoscalerActivator,
    LoadReporter,
    NoopActivator,
)
from matrixinfer.gateway.adapters.dataplane.haproxy import find_binary
from matrixinfer.gateway.adapters.dataplane.jwt import jwt_plan
from matrixinfer.gateway.adapters.dataplane.manager import DataPlane, EdgeFiles
from matrixinfer.gateway.adapters.dataplane.render import (
    ClientCert,
    EdgeTls,
    Options,
    Ports,
    ReplicaTls,
)
from matrixinfer.gateway.adapters.registry import KINDS, Routes
from matrixinfer.gateway.adapters.telemetry import ProxyMetrics, ProxyTracer
from matrixinfer.gateway.adapters.upstreams import Upstreams
from matrixinfer.gateway.domain.auth import (
    Authenticator,
    InMemoryApiKeyStore,
    client_cert_principals,
    next_key_expiry,
)
from matrixinfer.gateway.domain.balancer import Balancer
from matrixinfer.gateway.domain.load import LoadTracker
from matrixinfer.gateway.domain.routing import RoutingTable
from matrixinfer.gateway.grpc.proxy import SERVICE, InferenceProxy
from matrixinfer.gateway.http.admin import AdminApi
from matrixinfer.gateway.http.rest import rest_app
from matrixinfer.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


def _peers(values: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for value in values:
        name, sep, address = value.partition("=")
        if not sep or not name or ":" not in address:
            raise ValueError(
                f"MATRIXINFER_GATEWAY_PEERS entry {value!r} is not name=host:port"
            )
        out.append((name.strip(), address.strip()))
    return tuple(out)


def _edge_tls(settings: GatewaySettings) -> tuple[EdgeTls | None, EdgeFiles | None]:
    """TLS on the public ports, when a certificate is configured; client
    certificates (CN → scopes) when a client CA is too."""
    if settings.edge_tls_cert_file is None or settings.edge_tls_key_file is None:
        return None, None
    clients = []
    if settings.edge_tls_client_ca_file is not None:
        # The same principals the slow path's authenticator holds.
        principals = client_cert_principals(settings.edge_tls_client_scopes)
        for cn_hash, principal in principals.items():
            models = frozenset(
                x.removeprefix("infer:")
                for x in principal.scopes
                if x.startswith("infer:") and x != "infer:"
            )
            clients.append(ClientCert(cn_hash, models, principal.tenant or ""))
    tls = EdgeTls(
        client_ca=settings.edge_tls_client_ca_file is not None,
        clients=tuple(clients),
        header_secret=secrets.token_hex(16),
    )
    files = EdgeFiles(
        settings.edge_tls_cert_file,
        settings.edge_tls_key_file,
        settings.edge_tls_client_ca_file,
        settings.edge_tls_reload_s,
    )
    return tls, files


def _authenticator(
    settings: GatewaySettings,
    keys: InMemoryApiKeyStore,
    tls: EdgeTls | None = None,
) -> tuple[Authenticator, JwksFetcher | None]:
    jwt = settings.jwt_settings()
    if settings.auth_mode == "off":
        log.warning("authentication is OFF: every caller may use every model")
    fetcher: JwksFetcher | None = None

    def poke() -> None:
        if fetcher is not None:
            fetcher.poke()

    authenticator = Authenticator(
        keys,
        jwt,
        allow_anonymous=settings.auth_mode == "off",
        on_unknown_kid=poke,
        client_certs=client_cert_principals(settings.edge_tls_client_scopes)
        if tls is not None and tls.client_ca
        else None,
        client_cert_secret=tls.header_secret if tls is not None else "",
    )
    if jwt is not None and settings.jwks_url:
        fetcher = JwksFetcher(
            settings.jwks_url, authenticator, refresh_s=settings.jwks_refresh_s
        )
    return authenticator, fetcher


@dataclass
class GatewayApp:
    """HAProxy on the public ports (the data plane), this process behind it for what
    HAProxy hands over (the slow path), both fed by one routing table."""

    settings: GatewaySettings
    channel: grpc.aio.Channel
    informer: Informer
    routes: Routes
    upstreams: Upstreams
    server: RunningServer
    tracker: LoadTracker
    rest: web.AppRunner
    dataplane: DataPlane
    reporter: LoadReporter | None = None
    autoscaler: grpc.aio.Channel | None = None
    tracer_provider: TracerProvider | None = None
    jwks: JwksFetcher | None = None
    temp_dir: pathlib.Path | None = None

    _sync_task: asyncio.Task[None] = field(init=False, repr=False)
    _expiry_task: asyncio.Task[None] = field(init=False, repr=False)

    @property
    def address(self) -> str:
        """Where clients send KServe v2 gRPC (HAProxy)."""
        return f"{self.settings.host}:{self.dataplane.ports.grpc}"

    @property
    def http_url(self) -> str:
        """Where clients send KServe v2 REST and the admin API (HAProxy)."""
        scheme = "https" if self.dataplane.edge is not None else "http"
        return f"{scheme}://{self.settings.host}:{self.dataplane.ports.http}"

    @classmethod
    async def start(
        cls, settings: GatewaySettings, span_exporter: SpanExporter | None = None
    ) -> GatewayApp:
        """Start serving; ``span_exporter`` adds one (tests read spans back)."""
        binary = find_binary(settings.haproxy_binary)
        peers = _peers(settings.peers)
        # Deadlines, keepalive and bounded retries on every call (core's factory).
        # mTLS with the gateway's certificate when its tls_* files are set.
        files = settings.tls_files()
        channel = create_channel(
            settings.registry_address, tls=client_tls(files, "registry")
        )
        informer = Informer(RegistryClient(channel), KINDS)
        routes = Routes(informer)
        informer.subscribe(routes.rebuild)
        replica_files = settings.replica_tls_files()
        upstreams = Upstreams(
            settings.max_message_bytes, client_tls(replica_files, REPLICA)
        )
        tracker = LoadTracker()
        autoscaler = (
            create_channel(
                settings.autoscaler_address, tls=client_tls(files, "autoscaler")
            )
            if settings.autoscaler_address
            else None
        )
        balancer = Balancer()
        background: set[asyncio.Task[None]] = set()

        def forget_gone(table: RoutingTable) -> None:
            live = {
                replica
                for route in table.routes.values()
                for rule in route.rules
                for server in [s for s, _ in rule.targets]
                + ([rule.mirror[0]] if rule.mirror else [])
                for replica in server.replicas
            }
            balancer.forget_except(live)
            task = asyncio.get_running_loop().create_task(upstreams.retire(live))
            background.add(task)
            task.add_done_callback(background.discard)

        routes.on_rebuild.append(forget_gone)
        edge_tls, edge_files = _edge_tls(settings)
        authenticator, jwks = _authenticator(settings, routes.api_keys, edge_tls)
        metrics = CollectorRegistry()
        tracer_provider = (
            setup_tracing(settings.service_name, settings.otlp_endpoint, span_exporter)
            if settings.otlp_endpoint or span_exporter is not None
            else None
        )
        proxy = InferenceProxy(
            table=lambda: routes.table,
            upstreams=upstreams,
            balancer=balancer,
            default_timeout_s=settings.default_timeout_s,
            max_timeout_s=settings.max_timeout_s,
            ready=lambda: routes.synced,
            authenticator=authenticator,
            activator=AutoscalerActivator(autoscaler)
            if autoscaler
            else NoopActivator(),
            tracker=tracker,
            table_changed=routes.changed,
            max_held_per_model=settings.max_held_per_model,
            metrics=ProxyMetrics(metrics),
            tracer=ProxyTracer(tracer_provider),
        )
        admin = (
            AdminApi(
                channel,
                authenticator,
                auth_required=settings.auth_mode != "off",
                timeout_s=settings.admin_timeout_s,
                max_body_bytes=settings.admin_max_body_bytes,
                watch_max_s=settings.admin_watch_max_s,
            )
            if settings.admin_api
            else None
        )
        temp_dir = (
            None
            if settings.dataplane_dir is not None
            else pathlib.Path(tempfile.mkdtemp(prefix="matrixinfer-haproxy-"))
        )
        directory = settings.dataplane_dir or temp_dir
        assert directory is not None
        dataplane: DataPlane | None = None

        rest = web.AppRunner(
            rest_app(
                proxy,
                lambda: routes.synced,
                metrics,
                settings.max_message_bytes,
                admin,
                auth_required=settings.auth_mode != "off",
                dataplane_error=lambda: dataplane.last_error if dataplane else "",
            ),
            access_log=None,
        )
        server: RunningServer | None = None
        reporter: LoadReporter | None = None
        try:
            if jwks is not None:
                await jwks.start()
            await informer.start()
            # The slow path: loopback only, on ports of its own; HAProxy forwards.
            server = await start_server(
                settings.model_copy(
                    update={
                        "host": settings.slow_path_host,
                        "grpc_port": settings.slow_grpc_port,
                        "port_file": None,  # the public port is HAProxy's
                        # Only HAProxy calls it, on loopback: its TLS is the
                        # data plane's (edge) configuration, not mTLS here.
                        "tls_cert_file": None,
                        "tls_key_file": None,
                        "tls_ca_file": None,
                    }
                ),
                lambda s: s.add_generic_rpc_handlers((proxy.handler(),)),
                service_names=[SERVICE],
                metrics=GrpcServerMetrics(metrics),
                bypass=(f"/{SERVICE}/",),
            )
            await rest.setup()
            site = web.TCPSite(rest, settings.slow_path_host, settings.slow_http_port)
            await site.start()
            slow_http_port = int(rest.addresses[0][1])
            picked = free_ports(2, settings.host)
            ports = Ports(
                host=settings.host,
                grpc=settings.grpc_port or picked[0],
                http=settings.http_port or picked[1],
                slow_grpc=server.port,
                slow_http=slow_http_port,
                stats=settings.dataplane_stats_port,
            )
            options = Options(
                auth=settings.auth_mode != "off",
                default_timeout_ms=int(settings.default_timeout_s * 1000),
                max_timeout_ms=int(settings.max_timeout_s * 1000),
                threads=settings.dataplane_threads,
                peers=peers,
                peer_name=settings.peer_name,
                tls=edge_tls,
                replica_tls=(
                    ReplicaTls(identity_name(REPLICA)) if replica_files else None
                ),
            )
            dataplane = DataPlane(
                binary,
                settings.dataplane_mode,
                directory,
                ports,
                options,
                lambda: (
                    routes.pending,
                    routes.pending_keys,
                    jwt_plan(authenticator.jwt_settings, authenticator.jwks_by_kid),
                ),
                metrics,
                on_applied=routes.publish,
                edge=edge_files,
                replica_files=replica_files,
            )
            await dataplane.start()
            routes.deferred = True
            authenticator.on_jwks_change.append(dataplane.changed)
            if settings.port_file is not None:
                await asyncio.to_thread(write_port_file, settings.port_file, ports.grpc)
            routes.on_rebuild.append(
                lambda _: dataplane.changed() if dataplane else None
            )
            reporter = (
                LoadReporter(autoscaler, tracker, dataplane.load)
                if autoscaler
                else None
            )
        except BaseException:
            if dataplane is not None:
                await dataplane.stop()
            if server is not None:
                await server.stop(0)
            await rest.cleanup()
            if jwks is not None:
                await jwks.stop()
            await informer.stop()
            await channel.close()
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        app = cls(
            settings,
            channel,
            informer,
            routes,
            upstreams,
            server,
            tracker,
            rest,
            dataplane,
            reporter,
            autoscaler,
            tracer_provider,
            jwks,
            temp_dir,
        )
        if reporter is not None:
            reporter.start()
        loop = asyncio.get_running_loop()
        app._sync_task = loop.create_task(app._mark_synced())
        app._expiry_task = loop.create_task(app._expire_keys())
        return app

    async def _mark_synced(self) -> None:
        await self.informer.wait_synced(timeout_s=3600)
        self.routes.rebuild()
        self.routes.synced = True

    async def _expire_keys(self) -> None:
        """An API key that reaches its expiry leaves HAProxy's map within a second."""
        while True:
            now = time.time()
            expiry = next_key_expiry(self.routes.api_keys, now)
            await asyncio.sleep(1.0 if expiry is None else min(1.0, expiry - now))
            if expiry is not None and time.time() >= expiry:
                self.dataplane.changed()

    async def stop(self, grace_s: float | None = None) -> None:
        grace = self.settings.grace_period_s if grace_s is None else grace_s
        self._expiry_task.cancel()
        # Python first: it ends its streams (watches, held requests) cleanly; then
        # HAProxy's soft stop forwards those ends and finishes what it carries.
        await self.server.stop(grace)
        await self.rest.cleanup()
        await self.dataplane.stop(max(grace, 2.0))
        if self.reporter is not None:
            await self.reporter.stop()
        self._sync_task.cancel()
        await self.informer.stop()
        await self.upstreams.close()
        await self.channel.close()
        if self.autoscaler is not None:
            await self.autoscaler.close()
        if self.jwks is not None:
            await self.jwks.stop()
        if self.tracer_provider is not None:
            await asyncio.to_thread(self.tracer_provider.shutdown)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def main() -> None:
    settings = GatewaySettings()
    try:
        find_binary(settings.haproxy_binary)
    except RuntimeError as e:
        raise SystemExit(str(e)) from None
    run_service(
        settings,
        lambda: GatewayApp.start(settings),
        lambda app: (
            "gateway: HAProxy serves KServe v2 gRPC on "
            f"{app.address} and REST on {app.http_url}"
        ),
    )


if __name__ == "__main__":
    main()
