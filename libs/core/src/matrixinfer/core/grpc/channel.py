"""Client channels with the habits every outbound call needs.

A call without a deadline can hang forever on a half-dead peer, and a retry loop
without bounds turns one outage into a storm. Channels made here therefore give
every call a deadline unless the caller set one, retry only UNAVAILABLE (the peer
did not take the request; honouring a server's RetryInfo) within that deadline,
keep idle connections alive through NATs and load balancers, propagate the request
id, and, given a tracer provider, the W3C trace context.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
from opentelemetry.sdk.trace import TracerProvider
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from matrixinfer.core.grpc.errors import error_details
from matrixinfer.core.grpc.interceptors import REQUEST_ID_METADATA_KEY
from matrixinfer.core.grpc.tls import ClientTls, mtls_channel
from matrixinfer.core.logging import request_id_var
from matrixinfer.core.tracing import client_interceptors

_MIB = 1024 * 1024

#: Seconds before the first retry; later ones double, with jitter, up to the cap.
INITIAL_BACKOFF_S = 0.05

RETRYABLE_CODES: frozenset[Any] = frozenset({grpc.StatusCode.UNAVAILABLE})


def _with_timeout(details: Any, timeout_s: float | None) -> Any:
    return grpc.aio.ClientCallDetails(
        details.method,
        timeout_s,
        details.metadata,
        details.credentials,
        details.wait_for_ready,
    )


# --- deadlines -------------------------------------------------------------------


class _DeadlineBase:
    def __init__(self, timeout_s: float | None) -> None:
        self._timeout_s = timeout_s

    def _apply(self, details: Any) -> Any:
        if details.timeout is not None or self._timeout_s is None:
            return details
        return _with_timeout(details, self._timeout_s)


class DeadlineInterceptor(_DeadlineBase, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc, unused-ignore]
    """Gives unary calls without an explicit timeout the channel's default one."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._apply(client_call_details), request)


class UnaryStreamDeadlineInterceptor(
    _DeadlineBase,
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc, unused-ignore]
):
    """Server-streaming calls get a deadline only if the channel sets one for
    streams: watches legitimately stay open for hours."""

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._apply(client_call_details), request)


class StreamUnaryDeadlineInterceptor(
    _DeadlineBase,
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[misc, unused-ignore]
):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._apply(client_call_details), request_iterator)


class StreamStreamDeadlineInterceptor(
    _DeadlineBase,
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[misc, unused-ignore]
):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._apply(client_call_details), request_iterator)


def deadline_interceptors(
    default_timeout_s: float | None, stream_timeout_s: float | None
) -> list[Any]:
    """One interceptor per call kind (grpc.aio files each object under one kind)."""
    return [
        DeadlineInterceptor(default_timeout_s),
        UnaryStreamDeadlineInterceptor(stream_timeout_s),
        StreamUnaryDeadlineInterceptor(stream_timeout_s),
        StreamStreamDeadlineInterceptor(stream_timeout_s),
    ]


# --- request id ------------------------------------------------------------------


class _RequestIdBase:
    @staticmethod
    def _apply(details: Any) -> Any:
        request_id = request_id_var.get()
        if request_id is None:
            return details
        metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
        if REQUEST_ID_METADATA_KEY in metadata:
            return details
        metadata.add(REQUEST_ID_METADATA_KEY, request_id)
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )


class UnaryUnaryRequestIdInterceptor(
    _RequestIdBase,
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc, unused-ignore]
):
    """Forwards the request id bound in this task, so one id spans all services."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._apply(client_call_details), request)


class UnaryStreamRequestIdInterceptor(
    _RequestIdBase,
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc, unused-ignore]
):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._apply(client_call_details), request)


class StreamUnaryRequestIdInterceptor(
    _RequestIdBase,
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[misc, unused-ignore]
):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._apply(client_call_details), request_iterator)


class StreamStreamRequestIdInterceptor(
    _RequestIdBase,
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[misc, unused-ignore]
):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._apply(client_call_details), request_iterator)


def request_id_interceptors() -> list[Any]:
    return [
        UnaryUnaryRequestIdInterceptor(),
        UnaryStreamRequestIdInterceptor(),
        StreamUnaryRequestIdInterceptor(),
        StreamStreamRequestIdInterceptor(),
    ]


# --- retries ---------------------------------------------------------------------


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in RETRYABLE_CODES


class RetryInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc, unused-ignore]
    """Retries unary calls that failed UNAVAILABLE, within the call's deadline.

    The deadline covers all attempts together: each attempt gets what is left, and
    no backoff is started that would end past it. A server's google.rpc.RetryInfo
    lengthens the backoff. Streams are not retried: their messages may already
    have been consumed.
    """

    def __init__(
        self,
        attempts: int,
        max_backoff_s: float,
        *,
        initial_backoff_s: float = INITIAL_BACKOFF_S,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._attempts = attempts
        initial_backoff_s = min(initial_backoff_s, max_backoff_s)
        self._backoff = wait_exponential_jitter(
            multiplier=initial_backoff_s, max=max_backoff_s, jitter=initial_backoff_s
        )

    def _wait_s(self, retry_state: RetryCallState) -> float:
        wait_s = float(self._backoff(retry_state))
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, grpc.aio.AioRpcError):
            retry_after_s = error_details(error).retry_after_s
            if retry_after_s is not None:
                wait_s = max(wait_s, retry_after_s)
        return wait_s

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        timeout_s: float | None = client_call_details.timeout
        deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
        stop: stop_base = stop_after_attempt(self._attempts)
        if timeout_s is not None:
            stop = stop | stop_before_delay(timeout_s)
        call: Any = None
        async for attempt in AsyncRetrying(
            stop=stop,
            wait=self._wait_s,
            retry=retry_if_exception(_is_retryable),
            reraise=True,
        ):
            with attempt:
                details = client_call_details
                if deadline_s is not None:
                    details = _with_timeout(
                        details, max(deadline_s - time.monotonic(), 0.0)
                    )
                call = await continuation(details, request)
                # The call object only reports failure once awaited; a finished
                # call is then handed back, and awaiting it again is free.
                await call
        return call


def create_channel(
    target: str,
    *,
    default_timeout_s: float | None = 10.0,
    stream_timeout_s: float | None = None,
    retry_attempts: int = 3,
    retry_max_backoff_s: float = 2.0,
    max_message_bytes: int = 4 * _MIB,
    tracer_provider: TracerProvider | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    interceptors: Sequence[Any] = (),
    options: Sequence[tuple[str, Any]] = (),
    tls: ClientTls | None = None,
) -> grpc.aio.Channel:
    """An aio channel to ``target`` (``host:port``, ``dns:///...``).

    ``tls`` switches to mTLS with a service's certificate files: the server must
    present a certificate for ``tls.peer`` signed by the CA, and the channel follows
    the files when they are rotated (:class:`~matrixinfer.core.grpc.tls.TlsChannel`).
    ``credentials`` is fixed TLS instead; ``options`` are extra channel arguments
    and override ours. ``retry_attempts=1`` disables retries.
    """
    channel_options: dict[str, Any] = {
        # Find dead peers behind idle connections in ~40 s instead of the kernel's
        # hours; servers made by start_server accept pings this often.
        "grpc.keepalive_time_ms": 30_000,
        "grpc.keepalive_timeout_ms": 10_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
        "grpc.max_receive_message_length": max_message_bytes,
        "grpc.max_send_message_length": max_message_bytes,
    }
    channel_options.update(dict(options))

    # Outermost first: the request id and the deadline are fixed once per call,
    # the retry loop spends that deadline, and tracing records each attempt.
    stack: list[Any] = [
        *request_id_interceptors(),
        *deadline_interceptors(default_timeout_s, stream_timeout_s),
    ]
    if retry_attempts > 1:
        stack.append(RetryInterceptor(retry_attempts, retry_max_backoff_s))
    if tracer_provider is not None:
        stack.extend(client_interceptors(tracer_provider))
    stack.extend(interceptors)

    option_list = list(channel_options.items())
    if tls is not None:
        return mtls_channel(target, tls, option_list, stack)
    if credentials is not None:
        return grpc.aio.secure_channel(
            target, credentials, options=option_list, interceptors=stack
        )
    return grpc.aio.insecure_channel(target, options=option_list, interceptors=stack)
