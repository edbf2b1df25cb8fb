"""JWT verification: one implementation for every service that takes JWTs (the
gateway, for inference and its admin API; the registry, for its gRPC API and its
Kubernetes port).

:class:`JwtVerifier` checks a token against one identity provider's issuer,
audience and JWKS (fetched by :class:`~matrixinfer.core.jwks.JwksFetcher` or read
from a file) and returns its :class:`JwtClaims`: the subject, the scopes of the
scope claim (a space-separated string, as OAuth 2 sends it, or a list of strings)
and the tenant claim. Only asymmetric algorithms are accepted, because we hold
public keys only. This module does no I/O.

Every rejection is :class:`~matrixinfer.core.errors.Unauthenticated` with a short
message that never repeats the token, since messages end up in responses and logs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt

from matrixinfer.core.errors import Unauthenticated

# The NumericDate claims PyJWT checks against the clock (RFC 7519 4.1.4-4.1.6).
_TIME_CLAIMS = ("exp", "nbf", "iat")

#: Algorithms that verify with a public key. HS* is deliberately absent: with an
#: HMAC algorithm the "public" key would become the shared secret, so anyone who can
#: read the JWKS could mint tokens (the HS/RS confusion attack). "none" is absent
#: too.
ASYMMETRIC_ALGORITHMS = frozenset(
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
class JwtSettings:
    """How JWTs from one identity provider are verified."""

    issuer: str
    audience: str
    #: The provider's JWKS document, already fetched; fetching is another adapter's
    #: job so this module does no I/O.
    jwks: dict[str, Any]
    #: Asymmetric algorithms only; see ASYMMETRIC_ALGORITHMS for why.
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
        unsafe = [a for a in self.algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if unsafe:
            raise ValueError(
                f"JwtSettings.algorithms allows {unsafe}; only asymmetric "
                "algorithms are accepted (HS* and none enable token forgery)"
            )
        if not 0 <= self.leeway_s <= 300:
            raise ValueError("JwtSettings.leeway_s must be between 0 and 300 seconds")
        if self.max_token_bytes <= 0:
            raise ValueError("JwtSettings.max_token_bytes must be positive")


@dataclass(frozen=True)
class JwtClaims:
    """What a verified token says about its caller."""

    subject: str
    scopes: frozenset[str]
    tenant: str | None


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` parses as a JWT (a JSON header, two dots); says nothing of
    whether it is valid."""
    if token.count(".") != 2:
        return False
    try:
        pyjwt.get_unverified_header(token)
    except pyjwt.PyJWTError:
        return False
    return True


class JwtVerifier:
    """Verifies tokens against ``settings`` and the JWKS it holds (replaced when the
    provider's keys rotate)."""

    def __init__(
        self,
        settings: JwtSettings,
        on_unknown_kid: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        #: Called when a token names a key id we do not have (a rotation).
        self.on_unknown_kid = on_unknown_kid
        self._jwks_by_kid = index_jwks(settings.jwks)
        # Parsed keys per (kid, alg); bounded by the JWKS size times the allowed
        # algorithms because only kids present in the JWKS are ever added.
        self._parsed_keys: dict[tuple[str, str], pyjwt.PyJWK] = {}

    @property
    def settings(self) -> JwtSettings:
        return self._settings

    @property
    def jwks_by_kid(self) -> Mapping[str, Mapping[str, Any]]:
        return self._jwks_by_kid

    def replace_jwks(self, jwks: Mapping[str, Any]) -> bool:
        """Swap in a newly fetched JWKS (key rotation); True when the keys changed.
        Raises ValueError when the document is unusable, leaving the current keys
        in place."""
        if not isinstance(jwks.get("keys"), list):
            raise ValueError("a JWKS document needs a 'keys' list")
        index = index_jwks(jwks)
        changed = index != self._jwks_by_kid
        self._jwks_by_kid = index
        self._parsed_keys = {}
        return changed

    def verify(self, token: str) -> JwtClaims:
        settings = self._settings
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
        return JwtClaims(
            subject=claims["sub"],
            scopes=_scopes(claims.get(settings.scope_claim)),
            tenant=_tenant(claims.get(settings.tenant_claim)),
        )

    def _signing_key(self, kid: object, alg: str) -> pyjwt.PyJWK:
        # The kid is only ever a dict key here, so values such as "../../dev/null"
        # simply match nothing; no file, URL or cache path is built from it.
        if not isinstance(kid, str) or kid not in self._jwks_by_kid:
            if self.on_unknown_kid is not None:
                self.on_unknown_kid()  # the provider may have rotated its keys
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


def index_jwks(jwks: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
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
