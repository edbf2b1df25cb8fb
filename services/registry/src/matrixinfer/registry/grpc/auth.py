"""Who may call which registry method, on which namespace (docs/security.md,
"Control-plane authorization"; the scope grammar is :mod:`matrixinfer.core.scopes`).

The caller's identity was set by core's :class:`~matrixinfer.core.grpc.auth.CallerAuth`
(a service certificate, or an API key checked against the keys stored here); this
module decides, per request, from what the request touches.
"""

from __future__ import annotations

from collections.abc import Iterable

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core import identity as caller
from matrixinfer.core.errors import PermissionDenied
from matrixinfer.core.grpc.auth import ApiKeyVerifier
from matrixinfer.core.scopes import ADMIN_SCOPE, STATUS_SCOPE, require
from matrixinfer.registry.domain.kinds import unwrap
from matrixinfer.registry.domain.manifest import parse_manifest
from matrixinfer.registry.domain.service import MAX_PAGE, RegistryService

_DEFAULT_NAMESPACE = "default"
_API_KEY = "ApiKey"


def api_key_verifier(service: RegistryService, ttl_s: float = 1.0) -> ApiKeyVerifier:
    """Checks API keys against the ApiKey objects in this registry's own store."""

    async def load() -> list[pb.Resource]:
        items: list[pb.Resource] = []
        token = ""
        while True:
            page, _, token = await service.list(_API_KEY, "", "", MAX_PAGE, token)
            items.extend(page)
            if not token:
                return items

    return ApiKeyVerifier(load, ttl_s)


class Authorizer:
    """Scope checks for the servicer; ``enforce`` False lets everything through."""

    def __init__(self, enforce: bool) -> None:
        self.enforce = enforce

    def read(self, kind: str, namespace: str, all_namespaces: bool = False) -> None:
        if not self.enforce:
            return
        ns = None if all_namespaces and not namespace else namespace or "default"
        where = "every namespace" if ns is None else f"namespace {ns}"
        require(caller.current(), "read", ns, f"read {kind or 'objects'} in {where}")

    def write(self, kind: str, namespace: str, what: str) -> None:
        if not self.enforce:
            return
        # API keys grant scopes: only a global admin may write them.
        ns = None if kind == _API_KEY else namespace or _DEFAULT_NAMESPACE
        require(caller.current(), "write", ns, what)

    def status(self, kind: str, namespace: str, what: str) -> None:
        """UpdateStatus and UpdateFinalizers: the services that reconcile, or an
        admin of the namespace."""
        if not self.enforce or STATUS_SCOPE in caller.current().scopes:
            return
        self.write(kind, namespace, what)

    def admin(self, what: str) -> None:
        if not self.enforce:
            return
        identity = caller.current()
        if ADMIN_SCOPE not in identity.scopes:
            raise PermissionDenied(
                f"{identity.name} may not {what}: needs scope {ADMIN_SCOPE}"
            )

    def apply(self, request: rpb.ApplyRequest) -> None:
        if not self.enforce or ADMIN_SCOPE in caller.current().scopes:
            return
        for kind, namespace in _touched(request):
            self.write(kind, namespace, f"apply {kind} in namespace {namespace}")


def _touched(request: rpb.ApplyRequest) -> Iterable[tuple[str, str]]:
    """(kind, namespace) of each object an Apply writes."""
    seen: set[tuple[str, str]] = set()
    for resource in request.resources:
        obj = unwrap(resource, "resources")
        seen.add((obj.kind, obj.metadata.namespace or _DEFAULT_NAMESPACE))
    if request.manifest:
        for doc in parse_manifest(request.manifest):
            if not isinstance(doc, dict):
                continue  # admission names it; nothing is written
            meta = doc.get("metadata")
            namespace = meta.get("namespace") if isinstance(meta, dict) else None
            seen.add(
                (
                    str(doc.get("kind", "")),
                    str(namespace) if namespace else _DEFAULT_NAMESPACE,
                )
            )
    return sorted(seen)
