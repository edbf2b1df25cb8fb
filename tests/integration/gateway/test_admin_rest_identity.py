"""The gateway's REST admin API acts at the registry as its caller: the API key
or JWT it was given is passed on, so the registry (mTLS, authorization on)
checks that caller's scopes and its audit log names them, not the gateway."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from matrixinfer.core import pki
from matrixinfer.core.grpc.tls import ClientTls
from tests.idp import AUDIENCE, ISSUER, Provider, registry_jwt_settings
from tests.integration.conftest import Platform, running_platform, start_gateway

pytestmark = pytest.mark.timeout(180)

GATEWAY_AUDIENCE = "matrixinfer-gateway"

MODEL = """\
apiVersion: registry.matrixinfer.ai/v1alpha1
kind: Model
metadata: {name: %s}
spec:
  modelSpec: {modelId: m, framework: onnx, version: "1", source: {uri: "s3://b/m"}}
"""


def tls_settings(files: pki.CertFiles) -> dict[str, object]:
    return {
        "tls_cert_file": files.cert,
        "tls_key_file": files.key,
        "tls_ca_file": files.ca,
    }


@pytest_asyncio.fixture
async def platform(
    tmp_path: pathlib.Path, idp: Provider
) -> AsyncIterator[tuple[Platform, dict[str, pki.CertFiles], pathlib.Path]]:
    files = pki.ensure_pki(tmp_path / "pki")
    jwks = idp.write_jwks(tmp_path / "jwks.json")
    async with running_platform(
        tmp_path,
        registry_tls={**tls_settings(files["registry"]), **registry_jwt_settings(jwks)},
        admin=ClientTls(files["admin"], "registry"),
        **tls_settings(files["controller"]),
    ) as running:
        yield running, files, jwks


@pytest.fixture
def idp() -> Provider:
    return Provider()


async def audit_actors(platform: Platform, name: str) -> list[tuple[str, str]]:
    entries, _ = await platform.registry.service.list_audit(kind="Model", name=name)
    return [(e.action, e.actor) for e in entries]


async def test_the_registry_sees_the_admin_api_s_caller(
    platform: tuple[Platform, dict[str, pki.CertFiles], pathlib.Path], idp: Provider
) -> None:
    running, files, jwks = platform
    _, key = await running.registry.service.create_api_key(
        "default", "ops", ["admin"], "", ""
    )
    app = await start_gateway(
        running,
        None,
        auth_mode="required",
        jwt_issuer=ISSUER,
        jwt_audience=GATEWAY_AUDIENCE,
        jwks_path=jwks,
        **tls_settings(files["gateway"]),
    )
    try:
        url = f"{app.http_url}/apis/v1/apply"
        async with aiohttp.ClientSession() as session:

            async def apply(name: str, headers: dict[str, str]) -> tuple[int, str]:
                body = {"manifest": MODEL % name}
                async with session.post(url, json=body, headers=headers) as response:
                    answer = await response.json()
                    return response.status, str(answer.get("error", ""))

            both = idp.token("admin", aud=[AUDIENCE, GATEWAY_AUDIENCE])
            by_jwt = await apply("by-jwt", {"authorization": f"Bearer {both}"})
            by_key = await apply("by-key", {"x-api-key": key})
            # A token the gateway takes but the registry does not (it is not
            # meant for the registry): the registry checks the token itself.
            other = idp.token("admin", subject="bob", aud=GATEWAY_AUDIENCE)
            by_bob = await apply("by-bob", {"authorization": f"Bearer {other}"})
        assert (by_jwt[0], by_key[0]) == (200, 200)
        assert by_bob[0] == 401
        assert "audience" in by_bob[1]
        assert await audit_actors(running, "by-jwt") == [("create", "jwt:alice")]
        key_id = key.split("_")[1]
        assert await audit_actors(running, "by-key") == [("create", f"key:{key_id}")]
    finally:
        await app.stop(0)
