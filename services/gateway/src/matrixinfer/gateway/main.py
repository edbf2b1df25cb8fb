"""Composition root of the gateway: registry informer → routing table → the KServe v2
gRPC proxy on one port.

``GatewayApp.start`` is what ``main()`` runs and what tests use in-process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import grpc
import redis.asyncio
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry

from matrixinfer.core.grpc.server import RunningServer, serve_forever, start_server
from matrixinfer.core.logging import configure_logging
from matrixinfer.core.metrics import GrpcServerMetrics
from matrixinfer.core.registry.client import RegistryClient
from matrixinfer.core.registry.informer import Informer
from matrixinfer.core.tracing import setup_tracing
from matrixinfer.gateway.activation import (
    AutoscalerActivator,
    LoadReporter,
    LoadTracker,
    NoopActivator,
)
from matrixinfer.gateway.admin import AdminApi
from matrixinfer.gateway.auth import (
    ApiKeyRecord,
    Authenticator,
    InMemoryApiKeyStore,
    JwtSettings,
)
from matrixinfer.gateway.balancer import Balancer
from matrixinfer.gateway.jwks import JwksFetcher
from matrixinfer.gateway.proxy import SERVICE, InferenceProxy, Upstreams
from matrixinfer.gateway.ratelimit import (
    LocalTokenBucket,
    RateLimiter,
    RedisTokenBucket,
)
from matrixinfer.gateway.rest import rest_app
from matrixinfer.gateway.routing import RoutingTable, build_table
from matrixinfer.gateway.settings import GatewaySettings
from matrixinfer.gateway.telemetry import ProxyMetrics, ProxyTracer

log = logging.getLogger(__name__)
KINDS = ["ModelRoute", "ModelServer", "ModelInfer", "ApiKey"]


@dataclass
class Routes:
    """Holds the current table; rebuilt on every registry change."""

    informer: Informer | None = None
    table: RoutingTable = field(default_factory=RoutingTable)
    api_keys: InMemoryApiKeyStore = field(default_factory=InMemoryApiKeyStore)
    synced: bool = False
    #: Told about each new table (the gateway drops state of replicas that went).
    on_rebuild: Callable[[RoutingTable], None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def changed(self) -> None:
        """Returns after the next rebuild (held requests wait on this)."""
        await self._changed.wait()

    def rebuild(self, *_: object) -> None:
        informer = self.informer
        if informer is None:
            return
        self.table = build_table(
            [r.model_route for r in informer.items("ModelRoute")],
            [r.model_server for r in informer.items("ModelServer")],
            [r.model_infer for r in informer.items("ModelInfer")],
        )
        if self.on_rebuild is not None:
            self.on_rebuild(self.table)
        self.api_keys.records = {
            key.metadata.name: ApiKeyRecord(
                key_id=key.metadata.name,
                hash=key.spec.hash,
                subject=key.spec.subject,
                scopes=frozenset(key.spec.scopes),
                tenant=key.spec.tenant or None,
                revoked=key.spec.revoked,
                expires_at_s=_epoch_s(key.spec.expires_at),
            )
            for key in (r.api_key for r in informer.items("ApiKey"))
        }
        # Wake everyone waiting, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()


def _epoch_s(rfc3339: str) -> float | None:
    if not rfc3339:
        return None
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _authenticator(
    settings: GatewaySettings, keys: InMemoryApiKeyStore
) -> tuple[Authenticator, JwksFetcher | None]:
    jwt = None
    jwks_source = settings.jwks_url or settings.jwks_path
    if settings.jwt_issuer and settings.jwt_audience and jwks_source:
        jwt = JwtSettings(
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            jwks=json.loads(settings.jwks_path.read_text())
            if settings.jwks_path and not settings.jwks_url
            else {"keys": []},
        )
    if settings.auth_mode == "off":
        log.warning("authentication is OFF: every caller may use every model")
    fetcher: JwksFetcher | None = None

    def poke() -> None:
        if fetcher is not None:
            fetcher.poke()

    authenticator = Authenticator(
        keys, jwt, allow_anonymous=settings.auth_mode == "off", on_unknown_kid=poke
    )
    if jwt is not None and settings.jwks_url:
        fetcher = JwksFetcher(
            settings.jwks_url, authenticator, refresh_s=settings.jwks_refresh_s
        )
    return authenticator, fetcher


@dataclass
class GatewayApp:
    settings: GatewaySettings
    channel: grpc.aio.Channel
    informer: Informer
    routes: Routes
    upstreams: Upstreams
    server: RunningServer
    tracker: LoadTracker
    rest: web.AppRunner
    http_port: int
    reporter: LoadReporter | None = None
    autoscaler: grpc.aio.Channel | None = None
    redis_client: redis.asyncio.Redis | None = None
    tracer_provider: TracerProvider | None = None
    jwks: JwksFetcher | None = None

    _sync_task: asyncio.Task[None] = field(init=False, repr=False)

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.server.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.settings.host}:{self.http_port}"

    @classmethod
    async def start(
        cls, settings: GatewaySettings, span_exporter: SpanExporter | None = None
    ) -> GatewayApp:
        """Start serving; ``span_exporter`` adds one (tests read spans back)."""
        channel = grpc.aio.insecure_channel(settings.registry_address)
        routes = Routes()
        informer = Informer(RegistryClient(channel), KINDS, routes.rebuild)
        routes.informer = informer
        upstreams = Upstreams(settings.max_message_bytes)
        tracker = LoadTracker()
        autoscaler = (
            grpc.aio.insecure_channel(settings.autoscaler_address)
            if settings.autoscaler_address
            else None
        )
        redis_client = (
            redis.asyncio.Redis.from_url(settings.redis_url)
            if settings.redis_url
            else None
        )
        limiter = RateLimiter(
            LocalTokenBucket(),
            RedisTokenBucket(
                redis_client,
                failure_mode=settings.rate_limit_failure_mode,
                timeout_s=settings.rate_limit_redis_timeout_s,
            )
            if redis_client is not None
            else None,
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

        routes.on_rebuild = forget_gone
        authenticator, jwks = _authenticator(settings, routes.api_keys)
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
            limiter=limiter,
            activator=AutoscalerActivator(autoscaler)
            if autoscaler
            else NoopActivator(),
            tracker=tracker,
            table_changed=routes.changed,
            max_held_per_model=settings.max_held_per_model,
            metrics=ProxyMetrics(metrics),
            tracer=ProxyTracer(tracer_provider),
        )
        reporter = LoadReporter(autoscaler, tracker) if autoscaler else None
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
        rest = web.AppRunner(
            rest_app(
                proxy,
                lambda: routes.synced,
                metrics,
                settings.max_message_bytes,
                admin,
                auth_required=settings.auth_mode != "off",
            ),
            access_log=None,
        )
        server: RunningServer | None = None
        try:
            if jwks is not None:
                await jwks.start()
            await informer.start()
            server = await start_server(
                settings,
                lambda s: s.add_generic_rpc_handlers((proxy.handler(),)),
                service_names=[SERVICE],
                metrics=GrpcServerMetrics(metrics),
                reuse_port=settings.workers > 1,
                bypass=(f"/{SERVICE}/",),
            )
            await rest.setup()
            site = web.TCPSite(
                rest, settings.host, settings.http_port, reuse_port=settings.workers > 1
            )
            await site.start()
            http_port = int(rest.addresses[0][1])
        except BaseException:
            if server is not None:
                await server.stop(0)
            await rest.cleanup()
            if jwks is not None:
                await jwks.stop()
            await informer.stop()
            await channel.close()
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
            http_port,
            reporter,
            autoscaler,
            redis_client,
            tracer_provider,
            jwks,
        )
        if reporter is not None:
            reporter.start()
        app._sync_task = asyncio.get_running_loop().create_task(app._mark_synced())
        return app

    async def _mark_synced(self) -> None:
        await self.informer.wait_synced(timeout_s=3600)
        self.routes.rebuild()
        self.routes.synced = True

    async def stop(self, grace_s: float | None = None) -> None:
        await self.server.stop(
            self.settings.grace_period_s if grace_s is None else grace_s
        )
        await self.rest.cleanup()
        if self.reporter is not None:
            await self.reporter.stop()
        self._sync_task.cancel()
        await self.informer.stop()
        await self.upstreams.close()
        await self.channel.close()
        if self.autoscaler is not None:
            await self.autoscaler.close()
        if self.redis_client is not None:
            await self.redis_client.aclose()
        if self.jwks is not None:
            await self.jwks.stop()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()


async def _run(settings: GatewaySettings) -> None:
    app = await GatewayApp.start(settings)
    log.info("gateway serving KServe v2 gRPC on %s", app.address)
    try:
        await serve_forever(app.server, settings.grace_period_s)
    finally:
        await app.stop(0)


def _worker(values: dict[str, object]) -> None:
    settings = GatewaySettings.model_validate(values)
    configure_logging(settings.log_level, settings.log_json, settings.service_name)
    # The parent stops its workers with SIGTERM; SIGINT (Ctrl-C in a terminal) is
    # the parent's to handle, not every worker's at once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_run(settings))


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, settings.log_json, settings.service_name)
    if settings.workers > 1 and 0 in (settings.grpc_port, settings.http_port):
        raise SystemExit(
            "MATRIXINFER_GATEWAY_WORKERS > 1 needs fixed gRPC and HTTP ports"
        )
    # Spawned, not forked: a fork of a process with gRPC threads can hang.
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(settings.model_dump(),), daemon=True)
        for _ in range(settings.workers - 1)
    ]
    for worker in workers:
        worker.start()
    try:
        asyncio.run(_run(settings))
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(timeout=settings.grace_period_s + 5)


if __name__ == "__main__":
    main()
