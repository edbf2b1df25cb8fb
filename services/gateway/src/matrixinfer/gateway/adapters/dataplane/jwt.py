"""What HAProxy needs to verify JWTs itself, from the authenticator's settings and
JWKS: public keys as PEM files by kid, the accepted algorithms (those HAProxy 2.6's
`jwt_verify` implements), issuer, audience and leeway. Keys HAProxy cannot use
(EdDSA, a weak RSA key, a malformed entry) are left out, so tokens naming them take
the slow path, where Python answers exactly as before."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from matrixinfer.gateway.adapters.dataplane.render import JwtPlan
from matrixinfer.gateway.domain.auth import JwtSettings

#: Asymmetric algorithms HAProxy 2.6's jwt_verify implements.
NATIVE_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
MIN_RSA_BITS = 2048


def jwt_plan(
    settings: JwtSettings | None, jwks_by_kid: Mapping[str, Mapping[str, Any]]
) -> JwtPlan | None:
    if settings is None:
        return None
    algorithms = tuple(a for a in settings.algorithms if a in NATIVE_ALGORITHMS)
    keys = []
    for kid, jwk in sorted(jwks_by_kid.items()):
        alg = jwk.get("alg")
        if alg is not None and alg not in algorithms:
            continue
        pem = _public_pem(jwk, alg)
        if pem is not None:
            keys.append((kid, alg or "", pem))
    return JwtPlan(
        issuer=settings.issuer,
        audience=settings.audience,
        algorithms=algorithms,
        leeway_s=int(settings.leeway_s),
        max_token_bytes=settings.max_token_bytes,
        keys=tuple(keys),
    )


def _public_pem(jwk: Mapping[str, Any], alg: str | None) -> str | None:
    try:
        key = pyjwt.PyJWK(dict(jwk), algorithm=alg).key
    except (pyjwt.PyJWTError, KeyError, TypeError, ValueError):
        return None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return None
    elif not isinstance(key, ec.EllipticCurvePublicKey):
        return None  # private keys, symmetric or Ed25519 keys: not here
    pem: bytes = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()
