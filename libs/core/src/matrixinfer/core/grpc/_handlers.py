"""Wrapping grpc.aio method handlers, shared by our server interceptors.

A grpc.aio server interceptor can only act around an RPC by returning a new
``RpcMethodHandler`` whose behaviour calls the original. grpc picks how to drive a
behaviour from its *kind* (coroutine function vs async generator function), so the
wrapper must keep that kind: an async generator stays an async generator, and a
``context.write()``-style coroutine (like the health servicer's Watch) stays a
coroutine. This module does that once for all four RPC shapes.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]

#: Called with the servicer context at the start of each RPC; the returned async
#: context manager spans the handler's whole run, including every streamed message.
Around = Callable[[Any], AbstractAsyncContextManager[None]]


def _wrap_behavior(behavior: Any, around: Around) -> Any:
    if inspect.isasyncgenfunction(behavior):

        async def stream_wrapper(request: Any, context: Any) -> AsyncIterator[Any]:
            async with around(context):
                async for response in behavior(request, context):
                    yield response

        return stream_wrapper

    if inspect.iscoroutinefunction(behavior):

        async def coroutine_wrapper(request: Any, context: Any) -> Any:
            async with around(context):
                return await behavior(request, context)

        return coroutine_wrapper

    # A sync behaviour runs on grpc's thread pool with a sync context; wrapping it in
    # a coroutine would move it onto the event loop. Services here are async only.
    return behavior


def wrap_handler(handler: Any, around: Around) -> Any:
    """Return ``handler`` with each behaviour run inside ``around(context)``.

    ``None`` (method not found) stays ``None`` so grpc answers UNIMPLEMENTED.
    """
    if handler is None:
        return None
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            _wrap_behavior(handler.stream_stream, around),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_behavior(handler.stream_unary, around),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_behavior(handler.unary_stream, around),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        _wrap_behavior(handler.unary_unary, around),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def split_method(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` → (``pkg.Service``, ``Method``)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method
