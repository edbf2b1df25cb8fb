"""Which verifier a bearer credential goes to (core.grpc.auth.Credentials), the
identity a JWT gives, and when a service takes JWTs at all (JwtServiceSettings)."""

from __future__ import annotations

import pathlib

import pytest

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.errors import Unauthenticated
from matrixinfer.core.grpc.auth import ApiKeyVerifier, Credentials
from matrixinfer.core.identity import Identity
from matrixinfer.core.jwts import JwtVerifier
from matrixinfer.core.settings import JwtServiceSettings
from tests.idp import AUDIENCE, ISSUER, Provider


@pytest.fixture(scope="module")
def idp() -> Provider:
    return Provider()


def credentials(idp: Provider | None) -> Credentials:
    async def no_keys() -> list[pb.Resource]:
        return []

    jwts = None
    if idp is not None:
        settings = JwtServiceSettings(
            jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwks_url="https://idp.example/"
        ).jwt_settings()
        assert settings is not None
        jwts = JwtVerifier(settings)
        jwts.replace_jwks(idp.jwks())
    return Credentials(ApiKeyVerifier(no_keys), jwts, service="registry")


async def refusal(creds: Credentials, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        await creds.verify(token)
    return caught.value.message


async def test_a_jwt_names_its_subject_with_the_scopes_a_key_could_have(
    idp: Provider,
) -> None:
    token = idp.token(
        "admin:ns/team-a read:ns/team-b infer:* registry:status controller:scale",
        subject="alice",
    )
    identity = await credentials(idp).verify(token)
    assert identity == Identity(
        "jwt:alice", frozenset({"admin:ns/team-a", "read:ns/team-b", "infer:*"})
    )
    listed = await credentials(idp).verify(idp.token(["read", "autoscaler:load"]))
    assert listed.scopes == frozenset({"read"})


async def test_api_keys_and_other_tokens_stay_with_the_api_key_verifier(
    idp: Provider,
) -> None:
    creds = credentials(idp)
    assert await refusal(creds, "mik_0123456789abcdef_" + "x" * 43) == (
        "invalid API key"
    )
    assert await refusal(creds, "not-a-token") == (
        "bearer tokens other than MatrixInfer API keys are not accepted here"
    )


async def test_a_jwt_without_jwt_settings(idp: Provider) -> None:
    message = await refusal(credentials(None), idp.token("admin"))
    assert message == (
        "JWTs are not configured at the registry: use an API key or a client "
        "certificate"
    )


def test_jwts_need_issuer_audience_and_keys(
    tmp_path: pathlib.Path, idp: Provider
) -> None:
    jwks = idp.write_jwks(tmp_path / "jwks.json")
    full = {"jwt_issuer": ISSUER, "jwt_audience": AUDIENCE, "jwks_path": str(jwks)}
    for missing in full:
        partial = {k: v for k, v in full.items() if k != missing}
        assert JwtServiceSettings.model_validate(partial).jwt_settings() is None
    settings = JwtServiceSettings.model_validate(full).jwt_settings()
    assert settings is not None
    assert (settings.issuer, settings.audience, settings.jwks) == (
        ISSUER,
        AUDIENCE,
        idp.jwks(),
    )
    # A URL wins over the file: its keys come from the fetcher.
    by_url = JwtServiceSettings.model_validate(
        {**full, "jwks_url": "https://idp.example/jwks"}
    ).jwt_settings()
    assert by_url is not None
    assert by_url.jwks == {"keys": []}
