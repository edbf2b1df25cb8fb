"""The KServe v2 gRPC front door: ``inference.GRPCInferenceService`` served with
generic handlers on raw bytes, so tensors are never decoded. Model-scoped calls are
routed by the model name read from the wire (:mod:`matrixinfer.gateway.domain.wire`);
what happens to them (who may call, where they go, how long they may take, waiting
at zero, mirroring, retrying ``UNAVAILABLE`` on another replica) is decided by
:mod:`matrixinfer.gateway.domain.dispatch`; this module carries the bytes on a
persistent channel per replica (:mod:`matrixinfer.gateway.adapters.upstreams`) and
turns statuses into answers. Repository, shared-memory, trace and log APIs are
refused: clients must never change what is served or reach Triton internals.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
)
from typing import Any

import grpc
from google.protobuf.message import Message

from matrixinfer.core.errors import (
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from matrixinfer.core.grpc.errors import abort_for, status_code_for
from matrixinfer.gateway.adapters.telemetry import UNROUTED, ProxyMetrics, ProxyTracer
from matrixinfer.gateway.adapters.upstreams import Upstreams
from matrixinfer.gateway.domain.auth import (
    CLIENT_CERT_HEADER,
    Authenticator,
)
from matrixinfer.gateway.domain.balancer import Balancer
from matrixinfer.gateway.domain.dispatch import Dispatcher, UpstreamError
from matrixinfer.gateway.domain.load import LoadTracker
from matrixinfer.gateway.domain.ports import Activator
from matrixinfer.gateway.domain.routing import RoutingTable, Server
from matrixinfer.gateway.domain.tensors import check_infer_request
from matrixinfer.gateway.domain.wire import peek_model, with_model, with_priority
from matrixinfer.triton.protocol import service_pb2

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
ROUTED = ("ModelReady", "ModelMetadata", "ModelInfer", "ModelConfig", "ModelStatistics")
# Calls that wait (and wake the model) when it has no replica; ModelReady answers
# "not ready" and statistics do not start a model.
HOLDING = ("ModelInfer", "ModelMetadata", "ModelConfig")
PATHS = {method: f"/{SERVICE}/{method}" for method in ROUTED}
REFUSED = (
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
)
# Metadata a client sends that must not reach Triton (credentials) or is per hop;
# REST's framing headers too (a stream's gRPC body is not the REST body's length).
_DROPPED = {
    "authorization",
    "x-api-key",
    CLIENT_CERT_HEADER,
    "te",
    "content-type",
    "user-agent",
    "grpc-timeout",
    "content-length",
    "transfer-encoding",
    "connection",
    "host",
    "keep-alive",
    "expect",
}
_SHM_NAMES = re.compile(r"triton_python_backend_shm_region_\S*")


def _clean(details: str | None) -> str:
    """Backend error text without internal shared-memory names (the Wiz chain)."""
    return _SHM_NAMES.sub("<internal>", details or "")[:1024]


def _mapped(
    method: str, fn: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
    """``fn`` with its failures answered as statuses: Triton's own status for an
    upstream error, the mapped one (with details such as RetryInfo) for ours."""
    full = f"/{SERVICE}/{method}"

    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await fn(request, context)
        except UpstreamError as e:
            await context.abort(grpc.StatusCode[e.code], e.message)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort_for(context, e, full)
        raise AssertionError("unreachable")

    return call


def grpc_headers(context: grpc.aio.ServicerContext) -> dict[str, list[str]]:
    """Every metadata value per lowercase key (duplicates stay visible to auth)."""
    headers: dict[str, list[str]] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            headers.setdefault(key.lower(), []).append(value)
    return headers


class InferenceProxy:
    def __init__(
        self,
        table: Callable[[], RoutingTable],
        upstreams: Upstreams,
        balancer: Balancer,
        default_timeout_s: float,
        max_timeout_s: float,
        ready: Callable[[], bool],
        authenticator: Authenticator,
        activator: Activator,
        tracker: LoadTracker,
        table_changed: Callable[[], Awaitable[None]],
        max_held_per_model: int = 1000,
        metrics: ProxyMetrics | None = None,
        tracer: ProxyTracer | None = None,
    ) -> None:
        self._metrics = metrics if metrics is not None else ProxyMetrics(None)
        self._tracer = tracer if tracer is not None else ProxyTracer(None)
        self._dispatch = Dispatcher(
            table,
            authenticator,
            activator,
            tracker,
            table_changed,
            balancer,
            default_timeout_s,
            max_timeout_s,
            max_held_per_model,
        )
        self._table = table
        self._tracker = tracker
        self._balancer = balancer
        self._upstreams = upstreams
        self._ready = ready

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's handlers. The server's standard interceptor is bypassed for
        them (``bypass=`` in start_server): each maps its own errors here, and
        inference metrics are recorded per model by :class:`ProxyMetrics`."""
        unary: dict[str, Callable[[bytes, grpc.aio.ServicerContext], Any]] = {
            "ServerLive": self._server_live,
            "ServerReady": self._server_ready,
            "ServerMetadata": self._server_metadata,
        }
        for method in ROUTED:
            unary[method] = self._routed(method)
        for method in REFUSED:
            unary[method] = self._refused(method)
        handlers: dict[str, grpc.RpcMethodHandler] = {
            name: grpc.unary_unary_rpc_method_handler(_mapped(name, fn))
            for name, fn in unary.items()
        }
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self._stream_mapped
        )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    async def _stream_mapped(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        try:
            async for response in self.stream(
                requests, grpc_headers(context), context.time_remaining()
            ):
                yield response
        except UpstreamError as e:
            await context.abort(grpc.StatusCode[e.code], e.message)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort_for(context, e, f"/{SERVICE}/ModelStreamInfer")

    # ------------------------------------------------------------------ server-level

    async def _server_live(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        reply: Message = service_pb2.ServerLiveResponse(live=True)
        return reply.SerializeToString()

    async def _server_ready(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        reply: Message = service_pb2.ServerReadyResponse(ready=self._ready())
        return reply.SerializeToString()

    async def _server_metadata(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        reply: Message = service_pb2.ServerMetadataResponse(
            name="matrixinfer-gateway", version="0.1.0"
        )
        return reply.SerializeToString()

    def _refused(self, method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Any]:
        async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            raise PermissionDenied(f"{method} is not available through the gateway")

        return refuse

    # ------------------------------------------------------------------ routed calls

    @staticmethod
    def _forwarded_metadata(
        headers: dict[str, list[str]],
    ) -> tuple[tuple[str, str], ...]:
        return tuple(
            (k, v)
            for k, values in headers.items()
            if k not in _DROPPED and not k.startswith(":") and not k.endswith("-bin")
            for v in values
        )

    def _routed(self, method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Any]:
        async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self.handle(
                method, request, grpc_headers(context), context.time_remaining()
            )

        return call

    async def handle(
        self,
        method: str,
        request: bytes,
        headers: dict[str, list[str]],
        time_remaining_s: float | None,
    ) -> bytes:
        """One model-scoped call, whatever transport brought it (gRPC or REST)."""
        if method != "ModelInfer":
            name, version = peek_model(request)
            return await self._handle(
                method, request, name, version, headers, time_remaining_s
            )
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        name = UNROUTED
        try:
            name, version = peek_model(request)
            return await self._handle(
                method, request, name, version, headers, time_remaining_s
            )
        except UpstreamError as e:
            code = e.code
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException as e:
            code = status_code_for(e)
            raise
        finally:
            self._metrics.observe(
                name if name in self._table().routes else UNROUTED,
                code,
                time.perf_counter() - started,
            )

    async def _handle(
        self,
        method: str,
        request: bytes,
        name: str,
        version: str,
        headers: dict[str, list[str]],
        time_remaining_s: float | None,
    ) -> bytes:
        path = PATHS[method]
        call = self._dispatch.admit(headers, name, version)
        rule, server = call.rule, call.server
        if method == "ModelInfer":
            problem = check_infer_request(request)
            if problem is not None:
                raise InvalidArgument(problem)
        if method == "ModelReady" and not server.replicas:
            return b""  # ModelReadyResponse{ready: false}
        deadline = self._dispatch.deadline(time_remaining_s, server, rule.timeout_ms)
        load = self._tracker.load((server.namespace, server.model_infer))
        if method == "ModelInfer":
            load.arrivals += 1
        if not server.replicas and method in HOLDING:
            # Metadata and config wait too: clients often ask for them first.
            server = await self._dispatch.hold(
                name, version, call.headers, server, deadline
            )
        if rule.mirror and method == "ModelInfer":
            self._dispatch.mirror(rule.mirror, self._mirror_sender(path, request, name))
        if server.triton_model and server.triton_model != name:
            request = with_model(request, name=server.triton_model)
        if rule.priority and method == "ModelInfer":
            request = with_priority(request, rule.priority)
        metadata = self._forwarded_metadata(headers)
        load.in_flight += 1
        try:
            with self._tracer.span(method, name, call.headers) as trace_headers:
                if trace_headers:
                    metadata = tuple(
                        (k, v) for k, v in metadata if k not in trace_headers
                    ) + tuple(trace_headers.items())
                return await self._dispatch.forward(
                    method,
                    name,
                    server,
                    call.affinity,
                    deadline,
                    self._unary_sender(path, request, metadata),
                )
        finally:
            load.in_flight -= 1

    def _unary_sender(
        self, path: str, request: bytes, metadata: tuple[tuple[str, str], ...]
    ) -> Callable[[str, float], Awaitable[bytes]]:
        """One attempt of a unary call on a replica; its error status as an
        UpstreamError."""

        async def send(address: str, timeout_s: float) -> bytes:
            try:
                stub = self._upstreams.unary(address, path)
                response: bytes = await stub(
                    request, timeout=timeout_s, metadata=metadata
                )
                return response
            except grpc.aio.AioRpcError as e:
                raise UpstreamError(e.code().name, _clean(e.details())) from None

        return send

    def _mirror_sender(
        self, path: str, request: bytes, name: str
    ) -> Callable[[str, Server], Coroutine[Any, Any, None]]:
        async def send(address: str, target: Server) -> None:
            copy = request
            if target.triton_model and target.triton_model != name:
                copy = with_model(request, name=target.triton_model)
            try:
                stub = self._upstreams.unary(address, path)
                await stub(copy, timeout=target.timeout_ms / 1000.0)
            except grpc.aio.AioRpcError as e:
                log.debug("mirror to %s failed: %s", address, e.code().name)

        return send

    async def stream(
        self,
        requests: AsyncIterator[bytes],
        headers: dict[str, list[str]],
        time_remaining_s: float | None,
    ) -> AsyncGenerator[bytes, None]:
        """ModelStreamInfer, whatever transport brought it (gRPC, or REST's
        generate): pinned to one replica, chosen by its first request. Triton's
        error status is raised as :class:`UpstreamError`."""
        iterator = requests.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            return
        name, version = peek_model(first)
        call = self._dispatch.admit(headers, name, version)
        rule, server = call.rule, call.server
        if not server.replicas:
            deadline = self._dispatch.deadline(
                time_remaining_s, server, rule.timeout_ms
            )
            server = await self._dispatch.hold(
                name, version, call.headers, server, deadline
            )
        address = self._balancer.pick(
            server.replicas, set(), server.max_concurrent_per_replica, call.affinity
        )
        if address is None:
            raise Unavailable(f"model {name!r} has no ready replica")
        rename = (
            server.triton_model
            if server.triton_model and server.triton_model != name
            else None
        )

        # A stream is load like any other: one in flight while it is open, one
        # arrival per request message (so a streamed model is never "idle").
        load = self._tracker.load((server.namespace, server.model_infer))

        def rewrite(message: bytes) -> bytes:
            if rename:
                message = with_model(message, name=rename)
            if rule.priority:
                message = with_priority(message, rule.priority)
            return message

        async def upstream_requests() -> AsyncIterator[bytes]:
            load.arrivals += 1
            yield rewrite(first)
            async for message in iterator:
                load.arrivals += 1
                yield rewrite(message)

        self._balancer.started(address)
        load.in_flight += 1
        failed = False
        try:
            call = self._upstreams.channel(address).stream_stream(
                f"/{SERVICE}/ModelStreamInfer"
            )(upstream_requests(), metadata=self._forwarded_metadata(headers))
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as e:
            failed = e.code() == grpc.StatusCode.UNAVAILABLE
            raise UpstreamError(e.code().name, _clean(e.details())) from None
        finally:
            load.in_flight -= 1
            self._balancer.finished(
                address, failed, server.consecutive_errors, server.ejection_s
            )
