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

Through API aggregation the caller is the cluster's API server, forwarding for
one of its users: its front-proxy client certificate, signed by the CA of
:class:`FrontProxy` (never the registry's own), names no one; the user is in
``X-Remote-User`` (groups in ``X-Remote-Group``), as Kubernetes' request-header
authentication has it, and gets the scopes configured for that user and those
groups. Such a request's identity comes from those headers only; on any other
connection the headers mean nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

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


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    """The verified client certificate of an HTTPS request; None without one."""
    transport = request.transport
    if transport is None:
        return None
    tls: Any = transport.get_extra_info("ssl_object")
    der = tls.getpeercert(binary_form=True) if tls is not None else None
    return x509.load_der_x509_certificate(der) if der else None


@dataclass(frozen=True)
class FrontProxy:
    """The cluster's API server as a caller (request-header authentication)."""

    ca: x509.Certificate
    #: Common names its certificate may carry; empty: any that ``ca`` signed.
    allowed_names: frozenset[str]
    #: ``user:<name>`` / ``group:<name>`` -> scopes.
    scopes: Mapping[str, frozenset[str]]

    def signed(self, cert: x509.Certificate) -> bool:
        try:
            cert.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def identity(self, cert: x509.Certificate, request: web.Request) -> Identity:
        """The forwarded user of a request on a certificate :meth:`signed`."""
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(names[0].value) if names else ""
        if self.allowed_names and cn not in self.allowed_names:
            raise Unauthenticated(
                f"a front-proxy certificate named {cn!r}: not one of "
                "kube_requestheader_allowed_names"
            )
        user = request.headers.get("X-Remote-User", "")
        if not user:
            raise Unauthenticated(
                "the API server's front proxy sent no X-Remote-User: it forwards "
                "for no one"
            )
        groups = request.headers.getall("X-Remote-Group", [])
        subjects = [f"user:{user}", *(f"group:{group}" for group in groups)]
        scopes = frozenset().union(*(self.scopes.get(s, ()) for s in subjects))
        return Identity(f"kube:{user}", scopes)


@dataclass(frozen=True)
class KubeAuth:
    """Identities for every request; with ``enforce``, the scope checks too."""

    enforce: bool
    credentials: CredentialVerifier | None = None
    front_proxy: FrontProxy | None = None

    @property
    def authorizer(self) -> Authorizer:
        return Authorizer(self.enforce)

    async def identify(self, request: web.Request) -> Identity:
        if self.front_proxy is not None:
            cert = peer_certificate(request)
            if cert is not None and self.front_proxy.signed(cert):
                return self.front_proxy.identity(cert, request)
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
