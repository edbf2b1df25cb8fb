"""Starting and stopping a service's grpc.aio server the same way everywhere.

Every service needs the same things around its servicers: explicit resource limits
(message, metadata, streams), the standard health and reflection services, the
interceptor stack (tracing → request id → metrics → errors → the service's own),
a published port when bound to port 0, and a graceful stop on SIGTERM that first
reports NOT_SERVING so balancers drain the instance before connections close.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

import grpc  # type: ignore[import-untyped, unused-ignore]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider

from matrixinfer.core.grpc.interceptors import StandardInterceptor
from matrixinfer.core.grpc.tls import ServerTls
from matrixinfer.core.logging import configure_logging
from matrixinfer.core.metrics import GrpcServerMetrics
from matrixinfer.core.settings import ServiceSettings
from matrixinfer.core.tracing import server_interceptors

logger = logging.getLogger(__name__)

HEALTH_SERVICE_NAME: str = health.SERVICE_NAME
REFLECTION_SERVICE_NAME: str = reflection.SERVICE_NAME


def server_options(
    settings: ServiceSettings, *, reuse_port: bool = False
) -> list[tuple[str, int]]:
    """Channel arguments that bound what one client can make the server hold."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Soft and hard limit equal: between them gRPC rejects *randomly*.
        ("grpc.max_metadata_size", settings.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", settings.max_metadata_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        # Our channels ping every 30 s to find dead peers; by default a server
        # answers pings more often than every 5 min with GOAWAY(too_many_pings).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
        # Off by default so a second process on a fixed port fails loudly instead of
        # silently sharing it; the gateway's workers opt in to share one port.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


def _bind_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"{host}:{port}"


def write_port_file(path: Path, port: int) -> None:
    # Write-then-rename so a reader polling the file never sees it half written.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as tmp:
            tmp.write(f"{port}\n")
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


@dataclass
class RunningServer:
    """A started server and the handles needed to stop it well."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    #: The mTLS credentials' source when the server speaks mTLS (None: plaintext).
    tls: ServerTls | None = None
    #: The plaintext health-only server and its port (settings.health_port).
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None

    async def stop(self, grace_s: float | None) -> None:
        """Report NOT_SERVING, then let in-flight RPCs finish for ``grace_s``."""
        # Health first: watchers (balancers, the gateway) stop sending new work
        # while the RPCs already running complete.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        if self.health_server is not None:
            await self.health_server.stop(0)

    async def wait(self) -> None:
        """Return when the server has terminated."""
        await self.server.wait_for_termination()


async def start_server(
    settings: ServiceSettings,
    register: Callable[[grpc.aio.Server], None],
    *,
    service_names: Sequence[str],
    interceptors: Sequence[Any] = (),
    metrics: GrpcServerMetrics | None = None,
    tracer_provider: TracerProvider | None = None,
    reuse_port: bool = False,
    bypass: Sequence[str] = (),
) -> RunningServer:
    """Build, bind and start the service's server without blocking.

    ``register`` adds the service's servicers (``add_XServicer_to_server``);
    ``service_names`` are their full names, reported SERVING by health and listed
    by reflection. With the settings' TLS files set the port speaks only mTLS
    (a client certificate signed by the CA is required). Binding errors (port in
    use) raise here. ``bypass``: method
    prefixes whose handlers map their own errors and record their own metrics (the
    standard interceptor leaves them alone).
    """
    stack: list[Any] = []
    if tracer_provider is not None:
        stack.extend(server_interceptors(tracer_provider))
    stack.append(StandardInterceptor(metrics, bypass))
    stack.extend(interceptors)

    server = grpc.aio.server(
        interceptors=stack, options=server_options(settings, reuse_port=reuse_port)
    )
    register(server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, HEALTH_SERVICE_NAME, REFLECTION_SERVICE_NAME), server
    )

    address = _bind_address(settings.host, settings.grpc_port)
    files = settings.tls_files()
    tls = ServerTls(files) if files is not None else None
    try:
        if tls is not None:
            port = server.add_secure_port(address, tls.credentials())
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC server to {address}: {exc}") from exc
    if not port:  # older grpc reports a failed bind as port 0
        raise OSError(f"cannot bind gRPC server to {address}")

    # Set before start so no probe ever sees a named service as unknown.
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    await server.start()
    running = RunningServer(
        server=server,
        port=port,
        health=health_servicer,
        service_names=tuple(service_names),
        tls=tls,
    )
    try:
        if settings.health_port is not None:
            running.health_server, running.health_port = await _start_health_server(
                settings, health_servicer
            )
        if settings.port_file is not None:
            await asyncio.to_thread(write_port_file, settings.port_file, port)
    except BaseException:
        await running.stop(None)
        raise
    logger.info(
        "%s serving gRPC on %s%s",
        settings.service_name,
        _bind_address(settings.host, port),
        ""
        if files is None
        else (
            f" with mTLS (certificate {files.cert}); clients without a valid "
            f"certificate signed by the CA in {files.ca} are refused"
        ),
        extra={"grpc_port": port},
    )
    return running


async def _start_health_server(
    settings: ServiceSettings, health_servicer: health.aio.HealthServicer
) -> tuple[grpc.aio.Server, int]:
    """A plaintext server with the same health servicer and nothing else: what
    it says is what the main port's health says, and no other method is there."""
    assert settings.health_port is not None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = _bind_address(settings.host, settings.health_port)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot bind the health port to {address}: {exc}") from exc
    if not port:
        raise OSError(f"cannot bind the health port to {address}")
    await server.start()
    logger.info(
        "%s serving grpc.health.v1 (only) on %s in plaintext, for probes",
        settings.service_name,
        _bind_address(settings.host, port),
        extra={"health_port": port},
    )
    return server, port


async def serve_forever(running: RunningServer, grace_s: float) -> None:
    """Run until SIGTERM/SIGINT (then stop gracefully) or until the server ends.

    The previous signal handlers are restored on return, so a caller (or a test
    runner) sees the process as it was before.
    """
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    previous: dict[signal.Signals, Any] = {
        sig: signal.getsignal(sig) for sig in signals
    }

    def request_stop(sig: signal.Signals) -> None:
        logger.info("received %s, stopping with %.1f s grace", sig.name, grace_s)
        stop_requested.set()

    for sig in signals:
        loop.add_signal_handler(sig, request_stop, sig)
    stop_wait = asyncio.ensure_future(stop_requested.wait())
    server_wait = asyncio.ensure_future(running.wait())
    try:
        await asyncio.wait(
            {stop_wait, server_wait}, return_when=asyncio.FIRST_COMPLETED
        )
        if stop_requested.is_set():
            await running.stop(grace_s)
    finally:
        for task in (stop_wait, server_wait):
            task.cancel()
        await asyncio.gather(stop_wait, server_wait, return_exceptions=True)
        for sig in signals:
            loop.remove_signal_handler(sig)
            _restore_handler(sig, previous[sig])


def _restore_handler(sig: signal.Signals, handler: Any) -> None:
    # remove_signal_handler resets to SIG_DFL / default_int_handler; put back what
    # was there (None means it was installed outside Python and cannot be restored).
    if handler is None:
        return
    restored: Callable[[int, FrameType | None], Any] | int = handler
    signal.signal(sig, restored)


class ServiceApp(Protocol):
    """What :func:`run_service` needs of a started service."""

    @property
    def server(self) -> RunningServer: ...

    async def stop(self, grace_s: float) -> None: ...


App = TypeVar("App", bound=ServiceApp)


def run_service(
    settings: ServiceSettings,
    start: Callable[[], Awaitable[App]],
    ready: Callable[[App], str],
) -> None:
    """A service process's main: logging as its settings say, start it, log
    ``ready(app)``, serve until SIGTERM/SIGINT, stop."""
    configure_logging(settings.log_level, settings.log_json, settings.service_name)

    async def run() -> None:
        app = await start()
        logger.info("%s", ready(app))
        try:
            await serve_forever(app.server, settings.grace_period_s)
        finally:
            await app.stop(0)

    asyncio.run(run())
