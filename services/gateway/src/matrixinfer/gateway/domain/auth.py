"""Who is calling the gateway, and may they do what they ask.

Triton and KServe have no authentication of their own: both expect the front door to
do it. This module is that front door's decision, kept free of grpc and HTTP so the
gRPC interceptor and the REST middleware share one implementation and one set of
tests. It accepts two credentials:

* API keys (``mik_<key id>_<secret>``) issued by the registry. The key id is public and
  selects one stored record; only a hash of the whole key is stored.
* JWTs signed by an identity provider whose JWKS another adapter has already fetched,
  verified by core's :class:`~matrixinfer.core.jwts.JwtVerifier` (the registry's
  too). Only asymmetric algorithms are accepted, because we hold public keys only.
* Client certificates, when TLS at the edge asks for them: HAProxy verifies the
  certificate and passes the sha256 of its subject CN in ``CLIENT_CERT_HEADER``,
  with a secret that proves the header is HAProxy's; the CN maps to scopes by
  configuration. A credential header takes precedence over a certificate.

Every rejection is :class:`~matrixinfer.core.errors.Unauthenticated` or
:class:`~matrixinfer.core.errors.PermissionDenied` with a short message that never
repeats the credential, since messages end up in responses and logs.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from matrixinfer.core.apikeys import (
    API_KEY_PREFIX,
    api_key_id,
    generate_api_key,
    hash_api_key,
)
from matrixinfer.core.errors import PermissionDenied, Unauthenticated
from matrixinfer.core.jwts import JwtSettings, JwtVerifier

__all__ = [
    "API_KEY_PREFIX",
    "CLIENT_CERT_HEADER",
    "ApiKeyRecord",
    "ApiKeyStore",
    "Authenticator",
    "InMemoryApiKeyStore",
    "JwtSettings",
    "Principal",
    "api_key_id",
    "authorize_admin",
    "authorize_infer",
    "client_cert_principals",
    "generate_api_key",
    "hash_api_key",
    "next_key_expiry",
]

PrincipalVia = Literal["api_key", "jwt", "client_cert", "anonymous"]

#: Set by HAProxy (never by a client: it deletes what one sends) for the slow path:
#: "<secret>:<hex sha256 of the verified client certificate's subject CN>".
CLIENT_CERT_HEADER = "x-matrixinfer-client-cert"

_AUTHORIZATION = "authorization"
_X_API_KEY = "x-api-key"
_CREDENTIAL_HEADERS = frozenset({_AUTHORIZATION, _X_API_KEY})

# Compared against when the key id is unknown, so an unknown id costs the same
# hash-and-compare as a known one and the two cases look alike from outside.
_UNKNOWN_KEY_HASH = "sha256:" + "0" * 64

_INVALID_API_KEY = "invalid API key"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller, and what its scopes let it do."""

    subject: str
    scopes: frozenset[str]
    tenant: str | None
    via: PrincipalVia

    def can_infer(self, model_name: str) -> bool:
        return "infer:*" in self.scopes or f"infer:{model_name}" in self.scopes

    def can_admin(self) -> bool:
        return "admin" in self.scopes


@dataclass(frozen=True)
class ApiKeyRecord:
    """What the registry stores for one API key: never the key itself."""

    key_id: str
    hash: str
    subject: str
    scopes: frozenset[str]
    tenant: str | None
    revoked: bool = False
    #: Unix time in seconds after which the key stops working; None never expires.
    expires_at_s: float | None = None


class ApiKeyStore(Protocol):
    """Looks API key records up by key id (in the gateway, a cache fed by the
    registry)."""

    def get(self, key_id: str) -> ApiKeyRecord | None: ...


@dataclass
class InMemoryApiKeyStore:
    """An :class:`ApiKeyStore` held in a dict, for tests and local runs."""

    records: dict[str, ApiKeyRecord] = field(default_factory=dict)

    def add(self, record: ApiKeyRecord) -> None:
        self.records[record.key_id] = record

    def get(self, key_id: str) -> ApiKeyRecord | None:
        return self.records.get(key_id)


def client_cert_principals(
    scopes_by_cn: Mapping[str, list[str]],
) -> dict[str, Principal]:
    """hex sha256 of a client certificate's subject CN → who it is: its scopes as
    an API key's, ``tenant:<name>`` naming its tenant."""
    out: dict[str, Principal] = {}
    for cn, scopes in scopes_by_cn.items():
        tenants = [s.removeprefix("tenant:") for s in scopes if s.startswith("tenant:")]
        out[hashlib.sha256(cn.encode()).hexdigest()] = Principal(
            subject=f"cert:{cn}",
            scopes=frozenset(s for s in scopes if not s.startswith("tenant:")),
            tenant=tenants[0] if tenants else None,
            via="client_cert",
        )
    return out


def next_key_expiry(store: InMemoryApiKeyStore, now_s: float) -> float | None:
    times = [
        r.expires_at_s
        for r in store.records.values()
        if r.expires_at_s is not None and r.expires_at_s > now_s and not r.revoked
    ]
    return min(times) if times else None


class Authenticator:
    """Turns request headers into a :class:`Principal`, or raises Unauthenticated.

    Headers are passed as ``{lowercase name: [every value received]}`` so that
    duplicates, which a dict of single values would hide, can be refused.
    """

    def __init__(
        self,
        api_keys: ApiKeyStore | None,
        jwt: JwtSettings | None,
        allow_anonymous: bool = False,
        *,
        api_key_prefix: str = API_KEY_PREFIX,
        on_unknown_kid: Callable[[], None] | None = None,
        client_certs: Mapping[str, Principal] | None = None,
        client_cert_secret: str = "",
    ) -> None:
        #: hex sha256 of a certificate's subject CN → its principal (see
        #: client_cert_principals); only with a secret HAProxy shares.
        self._client_certs = dict(client_certs or {}) if client_cert_secret else {}
        self._client_cert_secret = client_cert_secret
        #: Told when the keys change (the data plane renders them).
        self.on_jwks_change: list[Callable[[], None]] = []
        self._api_keys = api_keys
        self._jwt = JwtVerifier(jwt, on_unknown_kid) if jwt is not None else None
        self._allow_anonymous = allow_anonymous
        self._api_key_prefix = api_key_prefix

    @property
    def jwt_settings(self) -> JwtSettings | None:
        return self._jwt.settings if self._jwt is not None else None

    @property
    def jwks_by_kid(self) -> Mapping[str, Mapping[str, Any]]:
        return self._jwt.jwks_by_kid if self._jwt is not None else {}

    def replace_jwks(self, jwks: Mapping[str, Any]) -> None:
        """Swap in a newly fetched JWKS (key rotation); raises ValueError when the
        document is unusable, leaving the current keys in place."""
        if self._jwt is None:
            raise ValueError("this authenticator takes no JWTs")
        if self._jwt.replace_jwks(jwks):
            for callback in self.on_jwks_change:
                callback()

    def authenticate(self, headers: Mapping[str, list[str]]) -> Principal:
        credential = _credential(headers)
        if credential is None:
            by_cert = self._client_cert(headers)
            if by_cert is not None:
                return by_cert
            if self._allow_anonymous:
                return Principal("anonymous", frozenset({"infer:*"}), None, "anonymous")
            raise Unauthenticated("missing credentials")
        # A credential that is present but wrong never falls back to anonymous:
        # that would silently downgrade a caller with a typo or a stale token.
        header, value = credential
        if header == _X_API_KEY:
            key = value.strip()
            if not key:
                raise Unauthenticated("empty x-api-key header")
            return self._authenticate_api_key(key)
        token = _bearer_token(value)
        if token.startswith(f"{self._api_key_prefix}_"):
            return self._authenticate_api_key(token)
        return self._authenticate_jwt(token)

    def _client_cert(self, headers: Mapping[str, list[str]]) -> Principal | None:
        """The principal of the client certificate HAProxy verified, None when the
        request came without one (or the header is not HAProxy's)."""
        if not self._client_cert_secret:
            return None
        values = headers.get(CLIENT_CERT_HEADER) or []
        if len(values) != 1:
            return None
        secret, _, cn_hash = values[0].partition(":")
        if not hmac.compare_digest(
            secret.encode("utf-8"), self._client_cert_secret.encode("utf-8")
        ):
            return None
        principal = self._client_certs.get(cn_hash)
        if principal is None:
            raise Unauthenticated("client certificate not accepted")
        return principal

    def _authenticate_api_key(self, key: str) -> Principal:
        # One message for every failure, so a caller cannot tell an unknown id from a
        # wrong secret or a revoked key, and the key is never echoed.
        key_id = api_key_id(key, self._api_key_prefix)
        if key_id is None or self._api_keys is None:
            raise Unauthenticated(_INVALID_API_KEY)
        record = self._api_keys.get(key_id)
        expected = record.hash if record is not None else _UNKNOWN_KEY_HASH
        # Constant time, so response timing does not reveal how much of the hash
        # matched.
        matches = hmac.compare_digest(
            hash_api_key(key).encode("utf-8"), expected.encode("utf-8")
        )
        if record is None or not matches or record.revoked:
            raise Unauthenticated(_INVALID_API_KEY)
        if record.expires_at_s is not None and time.time() >= record.expires_at_s:
            raise Unauthenticated(_INVALID_API_KEY)
        return Principal(record.subject, record.scopes, record.tenant, "api_key")

    def _authenticate_jwt(self, token: str) -> Principal:
        if self._jwt is None:
            raise Unauthenticated("bearer tokens are not accepted")
        claims = self._jwt.verify(token)
        return Principal(claims.subject, claims.scopes, claims.tenant, "jwt")


def authorize_infer(principal: Principal, model_name: str) -> None:
    if not principal.can_infer(model_name):
        raise PermissionDenied(f"not allowed to run inference on model {model_name!r}")


def authorize_admin(principal: Principal) -> None:
    if not principal.can_admin():
        raise PermissionDenied("admin scope required")


def _credential(headers: Mapping[str, list[str]]) -> tuple[str, str] | None:
    """The one credential header and its value, or None when there is none."""
    values: dict[str, list[str]] = {}
    for name, received in headers.items():
        lowered = name.lower()
        if "_" in lowered and lowered.replace("_", "-") in _CREDENTIAL_HEADERS:
            # A proxy that maps "_" to "-" (nginx, some WSGI servers) and one that
            # does not would each see a different credential. Envoy's edge advice
            # is headers_with_underscores_action: REJECT_REQUEST for this reason.
            raise Unauthenticated(
                "ambiguous credentials: credential header spelled with underscores"
            )
        if lowered in _CREDENTIAL_HEADERS:
            values.setdefault(lowered, []).extend(received)
    present = {name: got for name, got in values.items() if got}
    if not present:
        return None
    # Two credentials mean two layers may disagree about which one counts: refuse
    # instead of guessing.
    if len(present) > 1:
        raise Unauthenticated(
            "ambiguous credentials: send either authorization or x-api-key"
        )
    ((name, got),) = present.items()
    if len(got) > 1:
        raise Unauthenticated(f"ambiguous credentials: more than one {name} header")
    return name, got[0]


def _bearer_token(value: str) -> str:
    parts = value.split(None, 1)
    if not parts:
        raise Unauthenticated("empty authorization header")
    if parts[0].lower() != "bearer":
        # The scheme is not echoed: for Basic the next word is a password.
        raise Unauthenticated("unsupported authorization scheme; use Bearer")
    token = parts[1].strip() if len(parts) == 2 else ""
    if not token:
        raise Unauthenticated("empty bearer token")
    if any(c.isspace() for c in token):
        raise Unauthenticated("malformed bearer token")
    return token
