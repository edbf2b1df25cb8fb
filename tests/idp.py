"""An identity provider for tests: an RSA key pair (the ``cryptography`` library),
its JWKS, and tokens it signs with PyJWT (RS256)."""

from __future__ import annotations

import json
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://idp.example.com/"
AUDIENCE = "matrixinfer-registry"


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Provider:
    kid: str = "idp-1"
    key: rsa.RSAPrivateKey = field(default_factory=_new_key)

    def jwks(self) -> dict[str, Any]:
        public = pyjwt.algorithms.RSAAlgorithm.to_jwk(
            self.key.public_key(), as_dict=True
        )
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def write_jwks(self, path: pathlib.Path) -> pathlib.Path:
        path.write_text(json.dumps(self.jwks()))
        return path

    def token(
        self, scope: str | list[str], subject: str = "alice", **claims: Any
    ) -> str:
        """A token for ``subject`` with ``scope``, valid for five minutes; ``claims``
        override (None drops one)."""
        now = int(time.time())
        values: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + 300,
            "scope": scope,
            **claims,
        }
        return pyjwt.encode(
            {k: v for k, v in values.items() if v is not None},
            self.key,
            algorithm="RS256",
            headers={"kid": self.kid},
        )


def registry_jwt_settings(jwks_path: pathlib.Path) -> dict[str, Any]:
    """The registry settings that make it take this provider's tokens."""
    return {"jwt_issuer": ISSUER, "jwt_audience": AUDIENCE, "jwks_path": jwks_path}
