"""The KServe v2 gRPC front door: ``inference.GRPCInferenceService`` served with
generic handlers on raw bytes, so tensors are never decoded. Model-scoped calls are
routed by the model name read from the wire (:mod:`matrixinfer.gateway.domain.wire`)
to a replica chosen by the balancer, on a persistent channel per replica
(:mod:`matrixinfer.gateway.adapters.upstreams`); ``UNAVAILABLE`` is retried on
another replica. Repository, shared-memory, trace and log APIs are
refused: clients must never change what is served or reach Triton internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from matrixinfer.core.errors import (
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from matrixinfer.core.grpc.errors import abort_for, status_code_for
from matrixinfer.gateway.adapters.telemetry import UNROUTED, ProxyMetrics, ProxyTracer
from matrixinfer.gateway.adapters.upstreams import Upstreams
from matrixinfer.gateway.domain.auth import (
    CLIENT_CERT_HEADER,
    Authenticator,
    authorize_infer,
)
from matrixinfer.gateway.domain.balancer import Balancer
from matrixinfer.gateway.domain.load import LoadTracker
from matrixinfer.gateway.domain.ports import Activator
from matrixinfer.gateway.domain.routing import Route, RoutingTable, Rule, Server
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
            await context.abort(e.code, e.message)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort_for(context, e, full)
        raise AssertionError("unreachable")

    return call


class UpstreamError(Exception):
    """Triton answered with an error status; it goes to the caller as is (cleaned)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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
        self._activator = activator
        self._tracker = tracker
        self._table_changed = table_changed
        self._max_held_per_model = max_held_per_model
        self._authenticator = authenticator
        # Mirrored copies run beside the real traffic; bounded, so a slow mirror
        # target can never pile up work in the gateway.
        self._mirrors: set[asyncio.Task[None]] = set()
        # Activations in flight, one per ModelInfer (held requests share it).
        self._activations: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._max_mirrors = 64
        self._rng = random.Random()
        self._table = table
        self._upstreams = upstreams
        self._balancer = balancer
        self._default_timeout_s = default_timeout_s
        self._max_timeout_s = max_timeout_s
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
            await context.abort(e.code, e.message)
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

    def _timeout_s(
        self, remaining: float | None, server: Server, rule_ms: int
    ) -> float:
        cap = (rule_ms or server.timeout_ms) / 1000.0
        wanted = remaining if remaining is not None else self._default_timeout_s
        return max(0.0, min(wanted, cap, self._max_timeout_s))

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

    async def _admit(
        self, all_headers: dict[str, list[str]], name: str, version: str
    ) -> tuple[Route, Rule, Server, str | None, dict[str, str]]:
        """Authenticate, authorize and route one call (in that order: nothing about
        a model is revealed to a caller who may not use it; HAProxy has applied the
        route's rate limit before handing the call over). Also returns the
        sticky-routing key when the ModelServer asks for one."""
        principal = self._authenticator.authenticate(all_headers)
        authorize_infer(principal, name)
        headers = {k: v[-1] for k, v in all_headers.items()}
        route, rule, server = self._table().resolve(
            name, version, headers, principal.tenant
        )
        affinity = headers.get(server.hash_header) if server.hash_header else None
        return route, rule, server, affinity, headers

    async def _hold(
        self,
        name: str,
        version: str,
        headers: dict[str, str],
        server: Server,
        deadline: float,
    ) -> Server:
        """Wait for a replica of a model scaled to zero, asking for one first."""
        load = self._tracker.load((server.namespace, server.model_infer))
        if load.held >= self._max_held_per_model:
            raise ResourceExhausted(
                f"too many requests are waiting for model {name!r} to start",
                retry_after_s=1.0,
            )
        load.held += 1
        key = (server.namespace, server.model_infer)
        if key not in self._activations:  # one activation at a time per model
            activation = asyncio.create_task(
                self._activator.activate(server.namespace, server.model_infer)
            )
            self._activations[key] = activation
            activation.add_done_callback(lambda _: self._activations.pop(key, None))
        try:
            while not server.replicas:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(
                        f"model {name!r} had no ready replica before the deadline"
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._table_changed()
                _, _, server = self._table().resolve(name, version, headers)
            return server
        finally:
            load.held -= 1

    def _mirror(
        self, path: str, request: bytes, name: str, mirror: tuple[Server, int]
    ) -> None:
        target, percent = mirror
        if (
            self._rng.uniform(0, 100) >= percent
            or len(self._mirrors) >= self._max_mirrors
        ):
            return
        address = self._balancer.pick(
            target.replicas, set(), target.max_concurrent_per_replica
        )
        if address is None:
            return
        if target.triton_model and target.triton_model != name:
            request = with_model(request, name=target.triton_model)

        async def send() -> None:
            try:
                stub = self._upstreams.unary(address, path)
                await stub(request, timeout=target.timeout_ms / 1000.0)
            except grpc.aio.AioRpcError as e:
                log.debug("mirror to %s failed: %s", address, e.code().name)

        task = asyncio.create_task(send())
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

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
        route, rule, server, affinity, flat = await self._admit(headers, name, version)
        if method == "ModelInfer":
            problem = check_infer_request(request)
            if problem is not None:
                raise InvalidArgument(problem)
        if method == "ModelReady" and not server.replicas:
            return b""  # ModelReadyResponse{ready: false}
        deadline = time.monotonic() + self._timeout_s(
            time_remaining_s, server, rule.timeout_ms
        )
        load = self._tracker.load((server.namespace, server.model_infer))
        if method == "ModelInfer":
            load.arrivals += 1
        if not server.replicas and method in HOLDING:
            # Metadata and config wait too: clients often ask for them first.
            server = await self._hold(name, version, flat, server, deadline)
        if method == "ModelInfer" and rule.mirror is not None:
            self._mirror(path, request, name, rule.mirror)
        if server.triton_model and server.triton_model != name:
            request = with_model(request, name=server.triton_model)
        if rule.priority and method == "ModelInfer":
            request = with_priority(request, rule.priority)
        metadata = self._forwarded_metadata(headers)
        load.in_flight += 1
        try:
            with self._tracer.span(method, name, flat) as trace_headers:
                if trace_headers:
                    metadata = tuple(
                        (k, v) for k, v in metadata if k not in trace_headers
                    ) + tuple(trace_headers.items())
                return await self._forward(
                    method, path, request, metadata, name, server, affinity,
                    deadline,
                )  # fmt: skip
        finally:
            load.in_flight -= 1

    async def _forward(
        self,
        method: str,
        path: str,
        request: bytes,
        metadata: tuple[tuple[str, str], ...],
        name: str,
        server: Server,
        affinity: str | None,
        deadline: float,
    ) -> bytes:
        tried: set[str] = set()
        attempts = 1 + max(0, server.retry_attempts)
        last: grpc.aio.AioRpcError | None = None
        for _ in range(attempts):
            address = self._balancer.pick(
                server.replicas, tried, server.max_concurrent_per_replica, affinity
            )
            if address is None:
                break
            tried.add(address)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{method} for model {name!r} ran out of time")
            self._balancer.started(address)
            failed = False
            try:
                stub = self._upstreams.unary(address, path)
                response: bytes = await stub(
                    request, timeout=remaining, metadata=metadata
                )
                return response
            except grpc.aio.AioRpcError as e:
                failed = e.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.INTERNAL,
                )
                # Only UNAVAILABLE is safe to retry: the request never ran.
                if (
                    e.code() == grpc.StatusCode.UNAVAILABLE
                    and "UNAVAILABLE" in server.retry_on
                ):
                    last = e
                    continue
                raise UpstreamError(e.code(), _clean(e.details())) from None
            finally:
                self._balancer.finished(
                    address, failed, server.consecutive_errors, server.ejection_s
                )
        if last is not None:
            raise Unavailable(
                f"no replica of model {name!r} answered: {_clean(last.details())}"
            )
        if server.replicas and server.max_concurrent_per_replica:
            raise ResourceExhausted(
                f"every replica of model {name!r} is at its concurrency limit",
                retry_after_s=0.1,
            )
        raise Unavailable(f"model {name!r} has no ready replica")

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
        _, rule, server, affinity, flat = await self._admit(headers, name, version)
        if not server.replicas:
            deadline = time.monotonic() + self._timeout_s(
                time_remaining_s, server, rule.timeout_ms
            )
            server = await self._hold(name, version, flat, server, deadline)
        address = self._balancer.pick(
            server.replicas, set(), server.max_concurrent_per_replica, affinity
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
            raise UpstreamError(e.code(), _clean(e.details())) from None
        finally:
            load.in_flight -= 1
            self._balancer.finished(
                address, failed, server.consecutive_errors, server.ejection_s
            )
