"""Who calls the Kubernetes API port, and may they (docs/security.md,
"Control-plane authorization"): the same identities and scopes as the gRPC API.

An identity comes from ``Authorization: Bearer <API key or JWT>`` (or
``x-api-key``), checked by the registry's
:class:`~matrixinfer.core.grpc.auth.Credentials` (its API keys, and JWTs when it is
configured for them), or from the verified client certificate of an HTTPS
connection (its subjectAltName, read as the gRPC side reads it). With ``enforce``
a request with neither is 401 Unauthorized; the
:class:`~matrixinfer.registry.grpc.auth.Authorizer` then needs ``read`` for GET
(get, list, watch), ``write`` for other verbs and the ``status`` scope (or write)
for the status subresource, else 403 Forbidden naming the scope.
Discovery, /version and /openapi need only an identity.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from matrixinfer.core.errors import Unauthenticated
from matrixinfer.core.grpc.auth import (
    CredentialVerifier,
    certificate_identity,
    credential,
)
from matrixinfer.core.identity import ANONYMOUS, Identity, acting_as
from matrixinfer.registry.grpc.auth import Authorizer
from matrixinfer.registry.kube.resources import BY_RESOURCE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_READS = ("GET", "HEAD")


def peer_names(request: web.Request) -> list[str]:
    """The DNS names of the verified client certificate; empty without one."""
    transport = request.transport
    if transport is None:
        return []
    cert: Any = transport.get_extra_info("peercert")
    if not cert:
        return []
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]


@dataclass(frozen=True)
class KubeAuth:
    """Identities for every request; with ``enforce``, the scope checks too."""

    enforce: bool
    credentials: CredentialVerifier | None = None

    @property
    def authorizer(self) -> Authorizer:
        return Authorizer(self.enforce)

    async def identify(self, request: web.Request) -> Identity:
        headers = [(key.lower(), value) for key, value in request.headers.items()]
        token = credential(headers)
        if token is not None:
            if self.credentials is None:
                raise Unauthenticated("this registry takes no API keys")
            return await self.credentials.verify(token)
        return certificate_identity(peer_names(request)) or ANONYMOUS

    def authorize(self, request: web.Request) -> None:
        """Raise PermissionDenied unless the current identity may do what
        ``request`` asks (nothing to check for discovery and unknown paths)."""
        info = request.match_info
        kind = BY_RESOURCE.get((info.get("group", ""), info.get("plural", "")))
        if kind is None:
            return
        namespace = info.get("namespace", "")
        authorizer = self.authorizer
        if request.method in _READS:
            authorizer.read(kind.name, namespace, all_namespaces=not namespace)
            return
        where = f"in namespace {namespace or 'default'}"
        resource = info.route.resource
        if resource is not None and resource.canonical.endswith("/status"):
            authorizer.status(
                kind.name, namespace, f"update the status of {kind.name} {where}"
            )
            return
        verb = _VERBS.get(request.method, request.method.lower())
        authorizer.write(kind.name, namespace, f"{verb} {kind.name} {where}")

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        try:
            identity = await self.identify(request)
        except Unauthenticated:
            if self.enforce:
                raise
            identity = ANONYMOUS  # not enforcing: a bad credential is no one
        if self.enforce and identity is ANONYMOUS:
            raise Unauthenticated(
                "the registry needs a client certificate or a credential "
                "(Authorization: Bearer <API key>)"
            )
        with acting_as(identity):
            self.authorize(request)
            return await handler(request)
