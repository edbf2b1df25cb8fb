"""Who is calling the gateway, and may they do what they ask.

Triton and KServe have no authentication of their own: both expect the front door to
do it. This module is that front door's decision, kept free of grpc and HTTP so the
gRPC interceptor and the REST middleware share one implementation and one set of
tests. It accepts two credentials:

* API keys (``mik_<key id>_<secret>``) issued by the registry. The key id is public and
  selects one stored record; only a hash of the whole key is stored.
* JWTs signed by an identity provider whose JWKS another adapter has already fetched.
  Only asymmetric algorithms are accepted, because we hold public keys only.
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

# Imported under another name: the Authenticator's ``jwt`` parameter (JwtSettings)
# would otherwise shadow the library.
import jwt as pyjwt

from matrixinfer.core.apikeys import (
    API_KEY_PREFIX,
    api_key_id,
    generate_api_key,
    hash_api_key,
)
from matrixinfer.core.errors import PermissionDenied, Unauthenticated

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

# The NumericDate claims PyJWT checks against the clock (RFC 7519 4.1.4-4.1.6).
_TIME_CLAIMS = ("exp", "nbf", "iat")

# Algorithms that verify with a public key. HS* is deliberately absent: with an HMAC
# algorithm the "public" key would become the shared secret, so anyone who can read
# the JWKS could mint tokens (the HS/RS confusion attack). "none" is absent too.
_ASYMMETRIC_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
    }
)


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


@dataclass(frozen=True)
class JwtSettings:
    """How JWTs from one identity provider are verified."""

    issuer: str
    audience: str
    #: The provider's JWKS document, already fetched; fetching is another adapter's
    #: job so this module does no I/O.
    jwks: dict[str, Any]
    #: Asymmetric algorithms only; see _ASYMMETRIC_ALGORITHMS for why.
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    #: Clock skew tolerated between the provider and us on exp, nbf and iat.
    leeway_s: float = 30.0
    #: Larger tokens are refused before any parsing; real ones are 1-2 KiB.
    max_token_bytes: int = 8192
    #: A space-separated string (OAuth 2) or a list of strings.
    scope_claim: str = "scope"
    tenant_claim: str = "tenant"

    def __post_init__(self) -> None:
        # Fail at startup, not on the first request, when the policy is unsafe.
        if not self.algorithms:
            raise ValueError("JwtSettings.algorithms must not be empty")
        unsafe = [a for a in self.algorithms if a not in _ASYMMETRIC_ALGORITHMS]
        if unsafe:
            raise ValueError(
                f"JwtSettings.algorithms allows {unsafe}; only asymmetric "
                "algorithms are accepted (HS* and none enable token forgery)"
            )
        if not 0 <= self.leeway_s <= 300:
            raise ValueError("JwtSettings.leeway_s must be between 0 and 300 seconds")
        if self.max_token_bytes <= 0:
            raise ValueError("JwtSettings.max_token_bytes must be positive")


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
        self._on_unknown_kid = on_unknown_kid
        #: hex sha256 of a certificate's subject CN → its principal (see
        #: client_cert_principals); only with a secret HAProxy shares.
        self._client_certs = dict(client_certs or {}) if client_cert_secret else {}
        self._client_cert_secret = client_cert_secret
        #: Told when the keys change (the data plane renders them).
        self.on_jwks_change: list[Callable[[], None]] = []
        self._api_keys = api_keys
        self._jwt = jwt
        self._allow_anonymous = allow_anonymous
        self._api_key_prefix = api_key_prefix
        self._jwks_by_kid = _index_jwks(jwt.jwks) if jwt is not None else {}
        # Parsed keys per (kid, alg); bounded by the JWKS size times the allowed
        # algorithms because only kids present in the JWKS are ever added.
        self._parsed_keys: dict[tuple[str, str], pyjwt.PyJWK] = {}

    @property
    def jwt_settings(self) -> JwtSettings | None:
        return self._jwt

    @property
    def jwks_by_kid(self) -> Mapping[str, Mapping[str, Any]]:
        return self._jwks_by_kid

    def replace_jwks(self, jwks: Mapping[str, Any]) -> None:
        """Swap in a newly fetched JWKS (key rotation); raises ValueError when the
        document is unusable, leaving the current keys in place."""
        if not isinstance(jwks.get("keys"), list):
            raise ValueError("a JWKS document needs a 'keys' list")
        index = _index_jwks(jwks)
        changed = index != self._jwks_by_kid
        self._jwks_by_kid = index
        self._parsed_keys = {}
        if changed:
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
        settings = self._jwt
        if settings is None:
            raise Unauthenticated("bearer tokens are not accepted")
        # Before any parsing: base64 and JSON decoding cost grows with the input.
        if len(token.encode("utf-8")) > settings.max_token_bytes:
            raise Unauthenticated("token too large")
        try:
            header = pyjwt.get_unverified_header(token)
        except pyjwt.PyJWTError as e:
            raise Unauthenticated("malformed token") from e
        alg = header.get("alg")
        # Checked against our allow-list, never taken from the token: the token's
        # own alg is what the none and HS/RS confusion attacks forge.
        if not isinstance(alg, str) or alg not in settings.algorithms:
            raise Unauthenticated("token algorithm not allowed")
        key = self._signing_key(header.get("kid"), alg)
        try:
            claims = pyjwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=settings.audience,
                issuer=settings.issuer,
                # PyJWT checks exp, nbf and iat against the wall clock, this much
                # skew allowed.
                leeway=settings.leeway_s,
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    # Refuse, rather than warn about, a weak key in the JWKS.
                    "enforce_minimum_key_length": True,
                },
            )
        except pyjwt.InvalidSignatureError as e:
            raise Unauthenticated("token signature invalid") from e
        except pyjwt.ExpiredSignatureError as e:
            raise Unauthenticated("token expired") from e
        except pyjwt.ImmatureSignatureError as e:
            # One exception for a future nbf and a future iat; PyJWT's message
            # names the claim.
            if _time_claim_named(e) == "iat":
                raise Unauthenticated("token issued in the future") from e
            raise Unauthenticated("token not yet valid") from e
        except pyjwt.InvalidIssuedAtError as e:
            raise Unauthenticated("token claim iat is not a number") from e
        except pyjwt.InvalidAudienceError as e:
            raise Unauthenticated("token audience not accepted") from e
        except pyjwt.InvalidIssuerError as e:
            raise Unauthenticated("token issuer not accepted") from e
        except pyjwt.MissingRequiredClaimError as e:
            # The claim name is ours to say; it comes from the require list.
            raise Unauthenticated(f"token missing claim {e.claim}") from e
        except pyjwt.InvalidAlgorithmError as e:
            raise Unauthenticated("token algorithm not allowed") from e
        except pyjwt.InvalidKeyError as e:
            # enforce_minimum_key_length: e.g. a 1024-bit RSA key in the JWKS.
            raise Unauthenticated("signing key rejected") from e
        except pyjwt.DecodeError as e:
            # Also raised when exp or nbf is not a number (e.g. NaN or a string).
            claim = _time_claim_named(e)
            if claim is not None:
                raise Unauthenticated(f"token claim {claim} is not a number") from e
            raise Unauthenticated("invalid token") from e
        except pyjwt.PyJWTError as e:
            raise Unauthenticated("invalid token") from e
        # PyJWT takes anything int() takes ("123", true); RFC 7519 wants a number.
        for name in _TIME_CLAIMS:
            _require_number(claims, name)
        return Principal(
            subject=claims["sub"],
            scopes=_scopes(claims.get(settings.scope_claim)),
            tenant=_tenant(claims.get(settings.tenant_claim)),
            via="jwt",
        )

    def _signing_key(self, kid: object, alg: str) -> pyjwt.PyJWK:
        # The kid is only ever a dict key here, so values such as "../../dev/null"
        # simply match nothing; no file, URL or cache path is built from it.
        if not isinstance(kid, str) or kid not in self._jwks_by_kid:
            if self._on_unknown_kid is not None:
                self._on_unknown_kid()  # the provider may have rotated its keys
            raise Unauthenticated("unknown signing key")
        cached = self._parsed_keys.get((kid, alg))
        if cached is not None:
            return cached
        jwk = self._jwks_by_kid[kid]
        declared_alg = jwk.get("alg")
        if declared_alg is not None and declared_alg != alg:
            raise Unauthenticated("signing key does not match token algorithm")
        try:
            key = pyjwt.PyJWK(jwk, algorithm=alg)
        except (pyjwt.PyJWTError, KeyError, TypeError, ValueError) as e:
            # E.g. an ES256 token naming an RSA key, or a malformed JWKS entry.
            raise Unauthenticated("signing key does not match token algorithm") from e
        self._parsed_keys[(kid, alg)] = key
        return key


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


def _index_jwks(jwks: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """JWKs usable for signatures, by kid; the first wins if a kid repeats."""
    keys = jwks.get("keys")
    index: dict[str, dict[str, Any]] = {}
    if not isinstance(keys, list):
        return index
    for jwk in keys:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        # Keys published for encryption must not verify signatures (RFC 7517 4.2).
        if not isinstance(kid, str) or jwk.get("use", "sig") != "sig":
            continue
        index.setdefault(kid, jwk)
    return index


def _time_claim_named(error: pyjwt.PyJWTError) -> str | None:
    """The time claim a PyJWT claim-validation error is about, or None.

    PyJWT has no attribute for it, but its messages name the claim as "(exp)".
    """
    message = str(error)
    return next((name for name in _TIME_CLAIMS if f"({name})" in message), None)


def _require_number(claims: Mapping[str, Any], name: str) -> None:
    value = claims.get(name)
    # bool is an int subclass, and int() also takes digit strings. NaN and infinity
    # never get here: PyJWT refuses them.
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float)
    ):
        raise Unauthenticated(f"token claim {name} is not a number")


def _scopes(value: object) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return frozenset(value)
    raise Unauthenticated("token scope claim is malformed")


def _tenant(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise Unauthenticated("token tenant claim is malformed")
