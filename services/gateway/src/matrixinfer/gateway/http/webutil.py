"""What the gateway's two aiohttp surfaces share: KServe v2 REST (rest.py) and the
registry's admin API (admin.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

#: An aiohttp request handler (also what a middleware is handed).
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_headers(request: web.Request) -> dict[str, list[str]]:
    """Every header value per lowercase name (duplicates stay visible to auth): the
    shape the Authenticator takes, as
    :func:`matrixinfer.gateway.grpc.proxy.grpc_headers` gives gRPC metadata."""
    headers: dict[str, list[str]] = {}
    for key, value in request.headers.items():
        headers.setdefault(key.lower(), []).append(value)
    return headers
