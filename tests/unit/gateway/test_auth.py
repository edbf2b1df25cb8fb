"""The gateway lets in the callers it should, and only them.

Real keys and real signatures throughout: RSA and EC key pairs are generated here and
tokens are signed with PyJWT or, for the attacks PyJWT refuses to produce, by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from time_machine import TimeMachineFixture

from matrixinfer.core.errors import PermissionDenied, Unauthenticated
from matrixinfer.gateway.domain import auth
from matrixinfer.gateway.domain.auth import (
    ApiKeyRecord,
    Authenticator,
    InMemoryApiKeyStore,
    JwtSettings,
    Principal,
    authorize_admin,
    authorize_infer,
    generate_api_key,
    hash_api_key,
)

NOW_S = 1_750_000_000.0
ISSUER = "https://idp.example.com/"
AUDIENCE = "matrixinfer-gateway"


@pytest.fixture(autouse=True)
def frozen_time(time_machine: TimeMachineFixture) -> None:
    """Every test runs at NOW_S, the time the tokens and keys are made for."""
    time_machine.move_to(NOW_S, tick=False)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


@dataclass(frozen=True)
class Keys:
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    weak_rsa_key: rsa.RSAPrivateKey
    jwks: dict[str, Any]


@pytest.fixture(scope="module")
def keys() -> Keys:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    rsa_jwk = pyjwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    ec_jwk = pyjwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    weak_jwk = pyjwt.algorithms.RSAAlgorithm.to_jwk(weak_key.public_key(), as_dict=True)
    jwks = {
        "keys": [
            {**rsa_jwk, "kid": "rsa-1", "use": "sig"},
            {**ec_jwk, "kid": "ec-1"},
            {**weak_jwk, "kid": "weak-1"},
            # Same RSA key, published for encryption: must not verify signatures.
            {**rsa_jwk, "kid": "rsa-enc", "use": "enc"},
        ]
    }
    return Keys(rsa_key, ec_key, weak_key, jwks)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": int(NOW_S) - 10,
        "nbf": int(NOW_S) - 10,
        "exp": int(NOW_S) + 300,
        "scope": "infer:iris admin",
        "tenant": "acme",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def rs256(keys: Keys) -> Callable[..., str]:
    """Signs claims(**overrides) with the RSA key as RS256 under kid rsa-1."""

    def sign(kid: str = "rsa-1", **overrides: Any) -> str:
        return pyjwt.encode(
            claims(**overrides), keys.rsa_key, algorithm="RS256", headers={"kid": kid}
        )

    return sign


@dataclass
class World:
    authenticator: Authenticator
    store: InMemoryApiKeyStore
    key: str  # a valid API key for "svc-batch"
    revoked_key: str
    expired_key: str
    keys: Keys


def record_for(key: str, subject: str, **extra: Any) -> ApiKeyRecord:
    key_id = auth.api_key_id(key)
    assert key_id is not None
    return ApiKeyRecord(
        key_id=key_id,
        hash=hash_api_key(key),
        subject=subject,
        scopes=frozenset({"infer:iris"}),
        tenant="acme",
        **extra,
    )


@pytest.fixture
def world(keys: Keys) -> World:
    store = InMemoryApiKeyStore()
    key, _ = generate_api_key()
    revoked, _ = generate_api_key()
    expired, _ = generate_api_key()
    store.add(record_for(key, "svc-batch"))
    store.add(record_for(revoked, "svc-old", revoked=True))
    store.add(record_for(expired, "svc-temp", expires_at_s=NOW_S - 1))
    settings = JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks=keys.jwks)
    return World(
        Authenticator(store, settings),
        store,
        key,
        revoked,
        expired,
        keys,
    )


def bearer(token: str) -> dict[str, list[str]]:
    return {"authorization": [f"Bearer {token}"]}


def rejected(authenticator: Authenticator, headers: dict[str, list[str]]) -> str:
    with pytest.raises(Unauthenticated) as caught:
        authenticator.authenticate(headers)
    return caught.value.message


# --- API keys ----------------------------------------------------------------------


def test_generated_key_has_prefix_id_and_secret_and_its_hash() -> None:
    key, stored = generate_api_key()
    prefix, key_id, secret = key.split("_", 2)
    assert prefix == "mik"
    assert auth.api_key_id(key) == key_id
    assert len(secret) >= 43  # 32 random bytes, base64url
    assert (
        stored
        == hash_api_key(key)
        == "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    )
    assert secret not in stored
    assert generate_api_key()[0] != key


def test_prefix_with_underscore_is_refused() -> None:
    with pytest.raises(ValueError):
        generate_api_key("mi_k")


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
def test_valid_api_key_gives_its_principal(world: World, header: str) -> None:
    value = world.key if header == "x-api-key" else f"Bearer {world.key}"
    principal = world.authenticator.authenticate({header: [value]})
    assert principal == Principal(
        "svc-batch", frozenset({"infer:iris"}), "acme", "api_key"
    )


def wrong_secret(world: World) -> str:
    prefix, key_id, secret = world.key.split("_", 2)
    flipped = ("A" if secret[0] != "A" else "B") + secret[1:]
    return f"{prefix}_{key_id}_{flipped}"


def unknown_id(world: World) -> str:
    return generate_api_key()[0]


@pytest.mark.parametrize(
    "make_key",
    [
        pytest.param(wrong_secret, id="wrong-secret"),
        pytest.param(unknown_id, id="unknown-id"),
        pytest.param(lambda w: w.revoked_key, id="revoked"),
        pytest.param(lambda w: w.expired_key, id="expired"),
        pytest.param(lambda w: "mik_abc", id="truncated"),
        pytest.param(lambda w: "mik_../../etc_" + "a" * 43, id="bad-id"),
        pytest.param(lambda w: w.key + "x" * 300, id="oversized"),
    ],
)
@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
def test_bad_api_keys_get_one_message_that_does_not_echo_the_key(
    world: World, make_key: Callable[[World], str], header: str
) -> None:
    key = make_key(world)
    value = key if header == "x-api-key" else f"Bearer {key}"
    message = rejected(world.authenticator, {header: [value]})
    assert message == "invalid API key"
    assert key.split("_", 2)[-1] not in message  # the secret part, whole


def test_expiry_follows_the_clock(
    world: World, time_machine: TimeMachineFixture
) -> None:
    key, _ = generate_api_key()
    world.store.add(record_for(key, "svc-soon", expires_at_s=NOW_S + 1))
    assert world.authenticator.authenticate({"x-api-key": [key]}).subject == "svc-soon"
    time_machine.move_to(NOW_S + 1, tick=False)
    assert rejected(world.authenticator, {"x-api-key": [key]}) == "invalid API key"


def test_api_key_rejected_when_no_store(world: World) -> None:
    only_jwt = Authenticator(None, None)
    assert rejected(only_jwt, {"x-api-key": [world.key]}) == "invalid API key"


def test_hashes_are_compared_in_constant_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    # Patched where auth.py looks it up (hmac.compare_digest), undone after the test.
    monkeypatch.setattr(
        "matrixinfer.gateway.domain.auth.hmac.compare_digest", recording
    )
    world.authenticator.authenticate({"x-api-key": [world.key]})
    with pytest.raises(Unauthenticated):
        world.authenticator.authenticate({"x-api-key": [wrong_secret(world)]})
    expected = hash_api_key(world.key).encode()
    assert calls[0] == (expected, expected)
    assert calls[1] == (hash_api_key(wrong_secret(world)).encode(), expected)


# --- Which credential: missing, empty, duplicated, ambiguous -------------------------


def test_missing_credentials_are_refused(world: World) -> None:
    assert rejected(world.authenticator, {}) == "missing credentials"
    assert rejected(world.authenticator, {"authorization": []}) == (
        "missing credentials"
    )
    assert rejected(world.authenticator, {"content-type": ["x"]}) == (
        "missing credentials"
    )


def test_anonymous_allowed_gives_anonymous_principal(world: World) -> None:
    open_door = Authenticator(world.store, None, allow_anonymous=True)
    assert open_door.authenticate({"content-type": ["application/json"]}) == Principal(
        "anonymous", frozenset({"infer:*"}), None, "anonymous"
    )


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"x-api-key": ["mik_nope_" + "a" * 43]}, id="bad-key"),
        pytest.param({"x-api-key": ["not-a-key"]}, id="malformed-key"),
        pytest.param({"authorization": ["Bearer mik_"]}, id="malformed-bearer-key"),
        pytest.param({"authorization": ["Bearer "]}, id="empty-bearer"),
        pytest.param({"authorization": ["Bearer not.a.jwt"]}, id="garbage-jwt"),
    ],
)
def test_bad_credentials_never_fall_back_to_anonymous(
    world: World, keys: Keys, headers: dict[str, list[str]]
) -> None:
    settings = JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks=keys.jwks)
    open_door = Authenticator(world.store, settings, allow_anonymous=True)
    with pytest.raises(Unauthenticated):
        open_door.authenticate(headers)


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "empty authorization header"),
        ("   ", "empty authorization header"),
        ("Bearer", "empty bearer token"),
        ("Bearer ", "empty bearer token"),
        ("Bearer \t  ", "empty bearer token"),
        ("Bearer a b", "malformed bearer token"),
        ("Basic YWxpY2U6aHVudGVyMg==", "unsupported authorization scheme; use Bearer"),
    ],
)
def test_malformed_authorization_header(world: World, value: str, message: str) -> None:
    got = rejected(world.authenticator, {"authorization": [value]})
    assert got == message
    assert "YWxpY2U6aHVudGVyMg" not in got


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_bearer_scheme_is_case_insensitive(world: World, scheme: str) -> None:
    principal = world.authenticator.authenticate(
        {"authorization": [f"{scheme} {world.key}"]}
    )
    assert principal.subject == "svc-batch"


def test_empty_x_api_key_is_refused(world: World) -> None:
    assert rejected(world.authenticator, {"x-api-key": [" "]}) == (
        "empty x-api-key header"
    )


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(
            lambda w: {"authorization": [f"Bearer {w.key}", f"Bearer {w.key}"]},
            id="duplicate-authorization",
        ),
        pytest.param(
            lambda w: {"x-api-key": [w.key, w.revoked_key]},
            id="duplicate-x-api-key",
        ),
        pytest.param(
            lambda w: {"x-api-key": [w.key], "authorization": [f"Bearer {w.key}"]},
            id="x-api-key-and-authorization",
        ),
        pytest.param(
            lambda w: {"x-api-key": [w.key], "x_api_key": [w.revoked_key]},
            id="x_api_key-alongside-x-api-key",
        ),
        pytest.param(
            lambda w: {"authorization": [f"Bearer {w.key}"], "x_api_key": [w.key]},
            id="x_api_key-alongside-authorization",
        ),
        pytest.param(lambda w: {"x_api_key": [w.key]}, id="x_api_key-alone"),
        pytest.param(
            lambda w: {"Authorization": [f"Bearer {w.key}"], "authorization": ["x"]},
            id="two-spellings-of-authorization",
        ),
    ],
)
def test_ambiguous_credentials_are_refused(
    world: World, headers: Callable[[World], dict[str, list[str]]]
) -> None:
    message = rejected(world.authenticator, headers(world))
    assert message.startswith("ambiguous credentials")
    assert world.key not in message


# --- JWTs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope, expected",
    [
        pytest.param("infer:iris admin", {"infer:iris", "admin"}, id="string"),
        pytest.param(["infer:iris", "admin"], {"infer:iris", "admin"}, id="list"),
        pytest.param(None, set(), id="absent"),
    ],
)
def test_valid_rs256_jwt_gives_principal(
    world: World, rs256: Callable[..., str], scope: Any, expected: set[str]
) -> None:
    principal = world.authenticator.authenticate(bearer(rs256(scope=scope)))
    assert principal == Principal("alice", frozenset(expected), "acme", "jwt")


def test_valid_es256_jwt_gives_principal(world: World, keys: Keys) -> None:
    token = pyjwt.encode(
        claims(tenant=None), keys.ec_key, algorithm="ES256", headers={"kid": "ec-1"}
    )
    principal = world.authenticator.authenticate(bearer(token))
    assert principal == Principal(
        "alice", frozenset({"infer:iris", "admin"}), None, "jwt"
    )


def test_claim_names_are_configurable(keys: Keys) -> None:
    settings = JwtSettings(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks=keys.jwks,
        scope_claim="scp",
        tenant_claim="org",
    )
    token = pyjwt.encode(
        claims(scope=None, tenant=None, scp=["infer:*"], org="globex"),
        keys.rsa_key,
        algorithm="RS256",
        headers={"kid": "rsa-1"},
    )
    principal = Authenticator(None, settings).authenticate(bearer(token))
    assert principal.scopes == frozenset({"infer:*"})
    assert principal.tenant == "globex"


def test_leeway_tolerates_small_clock_skew(
    world: World, rs256: Callable[..., str]
) -> None:
    token = rs256(exp=int(NOW_S) - 29, nbf=int(NOW_S) + 29, iat=int(NOW_S) + 29)
    assert world.authenticator.authenticate(bearer(token)).subject == "alice"


def unsigned_token() -> str:
    header = b64url_json({"alg": "none", "typ": "JWT", "kid": "rsa-1"})
    return f"{header}.{b64url_json(claims())}."


def hs256_with_rsa_public_key(keys: Keys) -> str:
    """The HS/RS confusion: HMAC keyed with the public PEM anyone can download."""
    pem = keys.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64url_json({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"})
    signing_input = f"{header}.{b64url_json(claims())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def tampered(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64url_json(claims(scope='admin infer:*'))}.{signature}"


def es256_naming_rsa_kid(keys: Keys) -> str:
    return pyjwt.encode(
        claims(), keys.ec_key, algorithm="ES256", headers={"kid": "rsa-1"}
    )


def rs256_signed_by_other_key(keys: Keys) -> str:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return pyjwt.encode(claims(), other, algorithm="RS256", headers={"kid": "rsa-1"})


def rs384(keys: Keys) -> str:
    return pyjwt.encode(
        claims(), keys.rsa_key, algorithm="RS384", headers={"kid": "rsa-1"}
    )


def weak_key_token(keys: Keys) -> str:
    # PyJWT warns when signing with a short key; the point here is the verify side.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyjwt.InsecureKeyLengthWarning)
        return pyjwt.encode(
            claims(), keys.weak_rsa_key, algorithm="RS256", headers={"kid": "weak-1"}
        )


@pytest.mark.parametrize(
    "make_token, message",
    [
        pytest.param(
            lambda s, k: unsigned_token(), "token algorithm not allowed", id="alg-none"
        ),
        pytest.param(
            lambda s, k: hs256_with_rsa_public_key(k),
            "token algorithm not allowed",
            id="hs256-with-rsa-public-key",
        ),
        pytest.param(
            lambda s, k: rs384(k),
            "token algorithm not allowed",
            id="alg-outside-allow-list",
        ),
        pytest.param(
            lambda s, k: s(exp=int(NOW_S) - 31), "token expired", id="expired"
        ),
        pytest.param(
            lambda s, k: s(exp=int(NOW_S) - 3600), "token expired", id="long-expired"
        ),
        pytest.param(
            lambda s, k: s(nbf=int(NOW_S) + 31),
            "token not yet valid",
            id="nbf-in-future",
        ),
        pytest.param(
            lambda s, k: s(iat=int(NOW_S) + 31),
            "token issued in the future",
            id="iat-in-future",
        ),
        pytest.param(
            lambda s, k: s(exp=float("nan")),
            "token claim exp is not a number",
            id="exp-nan",
        ),
        pytest.param(
            lambda s, k: s(exp=float("inf")),
            "token claim exp is not a number",
            id="exp-infinity",
        ),
        pytest.param(
            lambda s, k: s(exp="tomorrow"),
            "token claim exp is not a number",
            id="exp-string",
        ),
        pytest.param(
            lambda s, k: s(exp=str(int(NOW_S) + 300)),
            "token claim exp is not a number",
            id="exp-digit-string",
        ),
        pytest.param(
            lambda s, k: s(nbf=True), "token claim nbf is not a number", id="nbf-bool"
        ),
        pytest.param(
            lambda s, k: s(nbf="soon"),
            "token claim nbf is not a number",
            id="nbf-string",
        ),
        pytest.param(
            lambda s, k: s(iat="soon"),
            "token claim iat is not a number",
            id="iat-string",
        ),
        pytest.param(lambda s, k: s(exp=None), "token missing claim exp", id="no-exp"),
        pytest.param(lambda s, k: s(sub=None), "token missing claim sub", id="no-sub"),
        pytest.param(
            lambda s, k: s(aud="someone-else"),
            "token audience not accepted",
            id="wrong-audience",
        ),
        pytest.param(
            lambda s, k: s(aud=None), "token missing claim aud", id="no-audience"
        ),
        pytest.param(
            lambda s, k: s(iss="https://evil.example/"),
            "token issuer not accepted",
            id="wrong-issuer",
        ),
        pytest.param(
            lambda s, k: s(kid="rsa-2"), "unknown signing key", id="unknown-kid"
        ),
        pytest.param(
            lambda s, k: s(kid="../../dev/null"),
            "unknown signing key",
            id="kid-path-traversal",
        ),
        pytest.param(
            lambda s, k: s(kid="rsa-enc"),
            "unknown signing key",
            id="kid-of-encryption-key",
        ),
        pytest.param(
            lambda s, k: es256_naming_rsa_kid(k),
            "signing key does not match token algorithm",
            id="es256-naming-rsa-key",
        ),
        pytest.param(
            lambda s, k: tampered(s()), "token signature invalid", id="tampered-payload"
        ),
        pytest.param(
            lambda s, k: rs256_signed_by_other_key(k),
            "token signature invalid",
            id="signed-by-other-key",
        ),
        pytest.param(
            lambda s, k: weak_key_token(k),
            "signing key rejected",
            id="1024-bit-key-in-jwks",
        ),
        pytest.param(
            lambda s, k: s(scope=7),
            "token scope claim is malformed",
            id="scope-not-string",
        ),
        pytest.param(
            lambda s, k: s(scope=["a", 1]),
            "token scope claim is malformed",
            id="scope-list-not-strings",
        ),
        pytest.param(
            lambda s, k: s(tenant=["a"]),
            "token tenant claim is malformed",
            id="tenant-not-string",
        ),
        pytest.param(
            lambda s, k: "eyJ" + "A" * 8200, "token too large", id="oversized"
        ),
        pytest.param(lambda s, k: "not-a-jwt", "malformed token", id="garbage"),
        pytest.param(lambda s, k: "a.b.c", "malformed token", id="garbage-segments"),
        pytest.param(
            lambda s, k: b64url(b"[1]") + ".e30.",
            "malformed token",
            id="header-not-object",
        ),
    ],
)
def test_bad_jwts_are_refused_without_echoing_the_token(
    world: World,
    rs256: Callable[..., str],
    make_token: Callable[[Callable[..., str], Keys], str],
    message: str,
) -> None:
    token = make_token(rs256, world.keys)
    got = rejected(world.authenticator, bearer(token))
    assert got == message
    for segment in token.split("."):
        if len(segment) > 8:
            assert segment not in got


def test_jwt_rejected_when_no_jwt_settings(
    world: World, rs256: Callable[..., str]
) -> None:
    keys_only = Authenticator(world.store, None)
    assert rejected(keys_only, bearer(rs256())) == "bearer tokens are not accepted"


def test_jwt_time_claims_follow_the_clock(
    keys: Keys, rs256: Callable[..., str], time_machine: TimeMachineFixture
) -> None:
    authenticator = Authenticator(
        None, JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks=keys.jwks)
    )
    token = rs256()
    assert authenticator.authenticate(bearer(token))
    time_machine.move_to(NOW_S + 86_400, tick=False)
    assert rejected(authenticator, bearer(token)) == "token expired"


@pytest.mark.parametrize(
    "algorithms", [("HS256",), ("RS256", "none"), ("RS256", "HS512"), ()]
)
def test_settings_refuse_symmetric_or_no_algorithms(
    keys: Keys, algorithms: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError):
        JwtSettings(
            issuer=ISSUER, audience=AUDIENCE, jwks=keys.jwks, algorithms=algorithms
        )


# --- Authorization -------------------------------------------------------------------


def principal(*scopes: str) -> Principal:
    return Principal("alice", frozenset(scopes), None, "jwt")


@pytest.mark.parametrize(
    "scopes, model, allowed",
    [
        (("infer:*",), "iris", True),
        (("infer:*",), "resnet", True),
        (("infer:iris",), "iris", True),
        (("infer:iris",), "resnet", False),
        (("infer:iris",), "iris2", False),
        (("admin",), "iris", False),
        ((), "iris", False),
    ],
)
def test_authorize_infer(scopes: tuple[str, ...], model: str, allowed: bool) -> None:
    who = principal(*scopes)
    assert who.can_infer(model) is allowed
    if allowed:
        authorize_infer(who, model)
    else:
        with pytest.raises(PermissionDenied, match=model):
            authorize_infer(who, model)


@pytest.mark.parametrize(
    "scopes, allowed",
    [(("admin",), True), (("infer:*",), False), (("admin:read",), False), ((), False)],
)
def test_authorize_admin(scopes: tuple[str, ...], allowed: bool) -> None:
    who = principal(*scopes)
    assert who.can_admin() is allowed
    if allowed:
        authorize_admin(who)
    else:
        with pytest.raises(PermissionDenied):
            authorize_admin(who)
