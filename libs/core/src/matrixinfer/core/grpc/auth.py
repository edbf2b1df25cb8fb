"""Who is calling a control-plane service, and may they call this method.

:class:`CallerAuth` is a server interceptor that sets the caller's
:class:`~matrixinfer.core.identity.Identity` for each call (``acting_as``):

* a credential in the metadata (``authorization: Bearer <API key or JWT>`` or
  ``x-api-key``) wins: it names a user, checked by :class:`ApiKeyVerifier`
  against the keys stored in the registry (``key:<key id>``), or, where the
  service takes JWTs (:class:`Credentials`), by core's
  :class:`~matrixinfer.core.jwts.JwtVerifier` (``jwt:<subject>``);
* otherwise the client certificate's name: ``service:<name>`` for
  ``<name>.matrixinfer.internal`` with that service's scopes
  (:data:`~matrixinfer.core.scopes.SERVICE_SCOPES`), ``cert:<name>`` with none for
  any other name the CA signed.

With ``enforce`` a call with neither is refused UNAUTHENTICATED, and ``policy``
(method name → scopes, any one of which is enough) refuses the others
PERMISSION_DENIED naming the scope needed. Health and reflection stay open to any
client that passed the TLS handshake (probes).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped, unused-ignore]

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.apikeys import API_KEY_PREFIX, api_key_id, hash_api_key
from matrixinfer.core.errors import PermissionDenied, Unauthenticated
from matrixinfer.core.grpc._handlers import split_method, wrap_handler
from matrixinfer.core.grpc.tls import peer_names
from matrixinfer.core.identity import ANONYMOUS, Identity, acting_as
from matrixinfer.core.jwts import JwtVerifier, looks_like_jwt
from matrixinfer.core.pki import service_of
from matrixinfer.core.scopes import GRANTABLE_SCOPE, SERVICE_SCOPES

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
_CREDENTIAL_KEYS = ("authorization", "x-api-key")
_INVALID_API_KEY = "invalid API key"
_UNKNOWN_KEY_HASH = "sha256:" + "0" * 64


def credential(metadata: Iterable[Any]) -> str | None:
    """The API key or bearer token in the call's metadata, or None; raises
    Unauthenticated for ambiguous or malformed credentials (never echoing them)."""
    found: list[tuple[str, str]] = []
    for item in metadata or ():
        key, value = item[0], item[1]
        if key in _CREDENTIAL_KEYS and isinstance(value, str):
            found.append((key, value))
    if not found:
        return None
    if len(found) > 1:
        raise Unauthenticated(
            "ambiguous credentials: send one authorization or x-api-key header"
        )
    key, value = found[0]
    if key == "x-api-key":
        token = value.strip()
    else:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthenticated("unsupported authorization scheme; use Bearer")
        token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise Unauthenticated("malformed credential")
    return token


@dataclass(frozen=True)
class _KeyRecord:
    hash: str
    subject: str
    scopes: frozenset[str]
    revoked: bool
    expires_at_s: float | None


def _record(key: pb.ApiKey) -> _KeyRecord:
    expires: float | None = None
    if key.spec.expires_at:
        try:
            expires = datetime.fromisoformat(
                key.spec.expires_at.replace("Z", "+00:00")
            ).timestamp()
        except ValueError:
            expires = 0.0  # unreadable expiry: treat as expired
    return _KeyRecord(
        key.spec.hash,
        key.spec.subject,
        frozenset(key.spec.scopes),
        key.spec.revoked,
        expires,
    )


class ApiKeyVerifier:
    """Checks API keys against the ApiKey objects ``load`` returns (the registry's
    store, or the registry over gRPC), reloaded at most every ``ttl_s`` seconds
    and at once for an unknown key id, so a new key works at once and a revoked
    one stops within ``ttl_s``."""

    def __init__(
        self,
        load: Callable[[], Awaitable[Iterable[pb.Resource]]],
        ttl_s: float = 1.0,
    ) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._records: dict[str, _KeyRecord] = {}
        self._loaded_s = -1e9
        self._lock = asyncio.Lock()

    async def _refresh(self, if_older_than_s: float) -> None:
        async with self._lock:
            if time.monotonic() - self._loaded_s < if_older_than_s:
                return
            records: dict[str, _KeyRecord] = {}
            for resource in await self._load():
                if resource.WhichOneof("object") == "api_key":
                    records[resource.api_key.metadata.name] = _record(resource.api_key)
            self._records = records
            self._loaded_s = time.monotonic()

    async def verify(self, token: str) -> Identity:
        key_id = api_key_id(token)
        if key_id is None:
            raise Unauthenticated(
                "bearer tokens other than MatrixInfer API keys are not accepted here"
            )
        await self._refresh(self._ttl_s)
        if key_id not in self._records:
            await self._refresh(0.05)  # maybe created a moment ago
        record = self._records.get(key_id)
        expected = record.hash if record is not None else _UNKNOWN_KEY_HASH
        matches = hmac.compare_digest(hash_api_key(token).encode(), expected.encode())
        if record is None or not matches or record.revoked:
            raise Unauthenticated(_INVALID_API_KEY)
        if record.expires_at_s is not None and time.time() >= record.expires_at_s:
            raise Unauthenticated(_INVALID_API_KEY)
        return Identity(f"key:{key_id}", record.scopes)


class CredentialVerifier(Protocol):
    """Who a bearer credential names (:class:`ApiKeyVerifier`, :class:`Credentials`)."""

    async def verify(self, token: str) -> Identity: ...


class Credentials:
    """API keys and JWTs: a token with the API key prefix (``mik_``) is checked by
    ``api_keys``; any other that parses as a JWT by ``jwts``, and names the caller
    ``jwt:<sub>`` with the scopes of its scope claim that a key could be given
    (:data:`~matrixinfer.core.scopes.GRANTABLE_SCOPE`: ``read``, ``admin``,
    ``read:ns/<ns>``, ``admin:ns/<ns>``, ``infer:...``; a service's own scopes such
    as ``registry:status`` grant nothing in a token). Without ``jwts`` a JWT is
    refused UNAUTHENTICATED saying JWTs are not configured at ``service``."""

    def __init__(
        self, api_keys: ApiKeyVerifier, jwts: JwtVerifier | None, *, service: str
    ) -> None:
        self._api_keys = api_keys
        self._jwts = jwts
        self._service = service

    async def verify(self, token: str) -> Identity:
        if token.startswith(f"{API_KEY_PREFIX}_") or not looks_like_jwt(token):
            return await self._api_keys.verify(token)
        if self._jwts is None:
            raise Unauthenticated(
                f"JWTs are not configured at the {self._service}: use an API key or "
                "a client certificate"
            )
        claims = self._jwts.verify(token)
        scopes = frozenset(s for s in claims.scopes if GRANTABLE_SCOPE.fullmatch(s))
        return Identity(f"jwt:{claims.subject}", scopes)


def certificate_identity(names: Iterable[str]) -> Identity | None:
    """The identity a verified client certificate's names give, or None."""
    names = list(names)
    for name in names:
        service = service_of(name)
        if service is not None and service in SERVICE_SCOPES:
            if service == "admin":
                return Identity("cert:admin", SERVICE_SCOPES[service])
            return Identity(f"service:{service}", SERVICE_SCOPES[service])
    if names:
        return Identity(f"cert:{names[0]}")
    return None


class CallerAuth(grpc.aio.ServerInterceptor):  # type: ignore[misc, unused-ignore]
    """Sets the caller's identity for each call; with ``enforce``, refuses the
    anonymous and those without a scope ``policy`` asks for."""

    def __init__(
        self,
        service: str,
        *,
        enforce: bool,
        policy: Mapping[str, frozenset[str]] | None = None,
        credentials: CredentialVerifier | None = None,
    ) -> None:
        self._service = service
        self._enforce = enforce
        self._policy = policy or {}
        self._credentials = credentials

    async def identify(self, metadata: Any, context: Any) -> Identity:
        token = credential(metadata)
        if token is not None:
            if self._credentials is None:
                raise Unauthenticated(
                    f"the {self._service} takes no API keys or tokens; use a client "
                    "certificate"
                )
            return await self._credentials.verify(token)
        return certificate_identity(peer_names(context)) or ANONYMOUS

    async def intercept_service(
        self, continuation: Any, handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        full_method: str = handler_call_details.method
        if handler is None or full_method.startswith(OPEN_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata
        _, method = split_method(full_method)
        allowed = self._policy.get(method)

        @asynccontextmanager
        async def around(context: Any) -> AsyncIterator[None]:
            try:
                identity = await self.identify(metadata, context)
            except Unauthenticated:
                if self._enforce:
                    raise
                identity = ANONYMOUS  # not enforcing: a bad credential is no one
            if self._enforce:
                if identity is ANONYMOUS:
                    raise Unauthenticated(
                        f"the {self._service} needs a client certificate or a "
                        "credential (authorization: Bearer <API key>, or x-api-key)"
                    )
                if allowed is not None and not identity.scopes & allowed:
                    log.warning("refused %s calling %s", identity.name, full_method)
                    raise PermissionDenied(
                        f"{identity.name} may not call {self._service} {method}: "
                        f"needs scope {' or '.join(sorted(allowed))}"
                    )
            with acting_as(identity):
                yield

        return wrap_handler(handler, around)
