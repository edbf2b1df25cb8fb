"""MatrixInfer API keys: their format, their stored hash and how to read their id.

Shared by the registry (which issues keys and stores only hashes) and the gateway
(which checks them on every request).
"""

from __future__ import annotations

import hashlib
import re
import secrets

#: The first segment of every key we issue. It lets a bearer token be told apart
#: from a JWT (which always starts with ``eyJ``) and makes leaked keys greppable by
#: secret scanners.
API_KEY_PREFIX = "mik"

# 32 random bytes: 256 bits, far beyond brute force, which is what lets the stored
# hash be a plain fast SHA-256 (see hash_api_key).
_API_KEY_SECRET_BYTES = 32
_API_KEY_ID_BYTES = 8
# A generous cap: a real key is about 65 bytes. Anything longer is not ours and is
# refused before it is hashed or sent to the store.
_API_KEY_MAX_BYTES = 256
_API_KEY_PREFIX_RE = re.compile(r"[a-z0-9]{1,16}")
_API_KEY_ID_RE = re.compile(r"[A-Za-z0-9]{1,64}")
_API_KEY_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{16,}")


def hash_api_key(secret: str) -> str:
    """Return the stored form of an API key: ``sha256:<hex>`` of the whole key.

    A fast hash is right here, unlike for passwords: our keys carry 256 random bits,
    so there is no dictionary to try and no benefit from a slow KDF, while the
    gateway hashes on every request. The key id embedded in the key means lookup is
    by id, never by scanning hashes, so no per-key salt is needed to defeat
    precomputation either. The ``sha256:`` tag leaves room to change the scheme.
    """
    digest = hashlib.sha256(secret.encode("utf-8")).hexdigest()
    return f"sha256:{digest}"


def generate_api_key(prefix: str = API_KEY_PREFIX) -> tuple[str, str]:
    """Return ``(key, stored_hash)`` for a new API key.

    The key (``<prefix>_<key id>_<secret>``) is shown to its owner once and never
    stored; the registry keeps only the hash and the key id (the middle segment).
    """
    if not _API_KEY_PREFIX_RE.fullmatch(prefix):
        # An underscore in the prefix would make the key id ambiguous to parse.
        raise ValueError("API key prefix must be 1-16 lowercase letters or digits")
    key_id = secrets.token_hex(_API_KEY_ID_BYTES)
    key = f"{prefix}_{key_id}_{secrets.token_urlsafe(_API_KEY_SECRET_BYTES)}"
    return key, hash_api_key(key)


def api_key_id(key: str, prefix: str = API_KEY_PREFIX) -> str | None:
    """The public key id inside ``key``, or None when ``key`` is not one of ours."""
    if len(key.encode("utf-8")) > _API_KEY_MAX_BYTES:
        return None
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != prefix:
        return None
    _, key_id, secret = parts
    if not _API_KEY_ID_RE.fullmatch(key_id) or not _API_KEY_SECRET_RE.fullmatch(secret):
        return None
    return key_id
