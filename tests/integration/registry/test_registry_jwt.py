"""JWTs at the registry's gRPC API (docs/security.md, "Control-plane
authorization"): a real registry with auth on, tokens signed by a test identity
provider (RS256, its JWKS in a file or at a URL), and the CLI sending its token."""

from __future__ import annotations

import asyncio
import pathlib
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.registry.main import RegistryApp
from tests.conftest import registry_settings, seed_manifest
from tests.idp import AUDIENCE, ISSUER, Provider, registry_jwt_settings

pytestmark = pytest.mark.timeout(120)

NOT_CONFIGURED = (
    "JWTs are not configured at the registry: use an API key or a client certificate"
)


@pytest.fixture(scope="module")
def idp() -> Provider:
    return Provider()


@pytest_asyncio.fixture
async def registry(tmp_path: pathlib.Path, idp: Provider) -> AsyncIterator[RegistryApp]:
    """Auth on (plaintext: credentials are the only way in), JWTs of ``idp``."""
    app = await RegistryApp.start(
        registry_settings(
            f"sqlite+aiosqlite:///{tmp_path}/registry.db",
            auth_mode="on",
            **registry_jwt_settings(idp.write_jwks(tmp_path / "jwks.json")),
        )
    )
    try:
        yield app
    finally:
        await app.stop(0)


@pytest_asyncio.fixture
async def stub(registry: RegistryApp) -> AsyncIterator[registry_pb2_grpc.RegistryStub]:
    async with grpc.aio.insecure_channel(registry.address) as channel:
        yield registry_pb2_grpc.RegistryStub(channel)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_an_admin_jwt_applies_and_a_read_jwt_cannot(
    stub: registry_pb2_grpc.RegistryStub, idp: Provider
) -> None:
    admin = idp.token("admin", subject="alice")
    read = idp.token("read", subject="bob")
    apply = rpb.ApplyRequest(manifest=seed_manifest())

    applied = await stub.Apply(apply, metadata=bearer(admin), timeout=5)
    assert [r.action for r in applied.results] == ["created"]

    listed = await stub.List(
        rpb.ListRequest(kind="Model"), metadata=bearer(read), timeout=5
    )
    assert [r.model.metadata.name for r in listed.items] == ["my-model"]
    error = await refused(stub.Apply(apply, metadata=bearer(read), timeout=5))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        "jwt:bob may not apply Model in namespace default: needs scope admin or "
        "admin:ns/default"
    )

    # The audit log names the token's subject.
    audit = await stub.ListAuditEntries(
        rpb.ListAuditEntriesRequest(kind="Model"), metadata=bearer(admin), timeout=5
    )
    assert [(e.actor, e.action, e.result) for e in audit.entries] == [
        ("jwt:alice", "create", "ok")
    ]


async def test_a_namespace_jwt_and_service_scopes_in_a_token(
    stub: registry_pb2_grpc.RegistryStub, idp: Provider
) -> None:
    """admin:ns/<ns> in the scope claim (here as a JSON list) writes that namespace
    only; a service's own scope in a token grants nothing."""
    team = idp.token(["admin:ns/team-a", "registry:status"], subject="carol")
    in_team_a = seed_manifest().replace(
        "  name: my-model\n", "  name: my-model\n  namespace: team-a\n"
    )
    applied = await stub.Apply(
        rpb.ApplyRequest(manifest=in_team_a), metadata=bearer(team), timeout=5
    )
    assert [r.action for r in applied.results] == ["created"]

    error = await refused(
        stub.Apply(
            rpb.ApplyRequest(manifest=seed_manifest()), metadata=bearer(team), timeout=5
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "needs scope admin or admin:ns/default" in error.details()

    status_only = idp.token("registry:status", subject="svc")
    error = await refused(
        stub.List(
            rpb.ListRequest(kind="Model"), metadata=bearer(status_only), timeout=5
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details().startswith("jwt:svc may not read Model")


async def test_bad_tokens_are_unauthenticated(
    stub: registry_pb2_grpc.RegistryStub, idp: Provider
) -> None:
    stranger = Provider(kid="other")
    impostor = Provider(kid=idp.kid)  # the provider's key id, another key
    cases = {
        "token expired": idp.token("admin", exp=1_000_000, iat=999_000),
        "token audience not accepted": idp.token("admin", aud="someone-else"),
        "token issuer not accepted": idp.token("admin", iss="https://evil.example/"),
        "unknown signing key": stranger.token("admin"),
        "token signature invalid": impostor.token("admin"),
    }
    for message, token in cases.items():
        error = await refused(
            stub.List(rpb.ListRequest(kind="Model"), metadata=bearer(token), timeout=5)
        )
        assert (error.code(), error.details()) == (
            grpc.StatusCode.UNAUTHENTICATED,
            message,
        )
        for segment in token.split("."):
            assert segment not in error.details()


@pytest.mark.parametrize("configured", ["nothing", "issuer and audience only"])
async def test_a_jwt_where_jwts_are_not_configured(
    tmp_path: pathlib.Path, idp: Provider, configured: str
) -> None:
    """JWTs need issuer, audience and keys; API keys work either way."""
    extra = (
        {}
        if configured == "nothing"
        else {"jwt_issuer": ISSUER, "jwt_audience": AUDIENCE}
    )
    app = await RegistryApp.start(
        registry_settings(
            f"sqlite+aiosqlite:///{tmp_path}/r.db", auth_mode="on", **extra
        )
    )
    try:
        _, key = await app.service.create_api_key("default", "ops", ["read"], "", "")
        token = idp.token("admin")
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            error = await refused(
                stub.List(
                    rpb.ListRequest(kind="Model"), metadata=bearer(token), timeout=5
                )
            )
            assert (error.code(), error.details()) == (
                grpc.StatusCode.UNAUTHENTICATED,
                NOT_CONFIGURED,
            )
            listed = await stub.List(
                rpb.ListRequest(kind="Model"), metadata=bearer(key), timeout=5
            )
            assert list(listed.items) == []
    finally:
        await app.stop(0)


async def test_keys_from_the_providers_jwks_url(
    tmp_path: pathlib.Path, idp: Provider
) -> None:
    """jwks_url: the registry fetches the provider's keys at start, and again when
    a token names a key id it does not know (a rotation; at most every 10 s)."""
    published = [idp]

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(
            {"keys": [k for p in published for k in p.jwks()["keys"]]}
        )

    site = web.Application()
    site.router.add_get("/.well-known/jwks.json", jwks)
    server = TestServer(site, host="127.0.0.1", port=0)
    await server.start_server()
    url = str(server.make_url("/.well-known/jwks.json"))
    app = await RegistryApp.start(
        registry_settings(
            f"sqlite+aiosqlite:///{tmp_path}/r.db",
            auth_mode="on",
            jwt_issuer=ISSUER,
            jwt_audience=AUDIENCE,
            jwks_url=url,
        )
    )
    try:
        fetcher = app.jwks
        assert fetcher is not None

        async def fetched(count: int) -> None:
            async with asyncio.timeout(20):
                while fetcher.fetched < count:
                    await asyncio.sleep(0.05)

        await fetched(1)
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            listing = rpb.ListRequest(kind="Model")
            listed = await stub.List(
                listing, metadata=bearer(idp.token("read")), timeout=5
            )
            assert list(listed.items) == []

            rotated = Provider(kid="idp-2")
            published.append(rotated)
            error = await refused(
                stub.List(listing, metadata=bearer(rotated.token("read")), timeout=5)
            )
            assert error.details() == "unknown signing key"
            await fetched(2)
            listed = await stub.List(
                listing, metadata=bearer(rotated.token("read")), timeout=5
            )
            assert list(listed.items) == []
    finally:
        await app.stop(0)
        await server.close()


async def test_the_cli_sends_a_jwt_as_its_token(
    registry: RegistryApp, idp: Provider, tmp_path: pathlib.Path
) -> None:
    """`matrixinfer --token <JWT>` (a subprocess, as a user runs it)."""
    manifest = tmp_path / "model.yaml"
    manifest.write_text(seed_manifest())

    async def cli(token: str, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "matrixinfer.cli", "--server", registry.address,
            "--token", token, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, (out + err).decode()

    code, out = await cli(
        idp.token("admin", subject="dave"), "apply", "-f", str(manifest)
    )
    assert code == 0, out
    code, out = await cli(idp.token("read"), "get", "models")
    assert (code, "my-model" in out) == (0, True), out
    code, out = await cli(
        idp.token("admin", exp=1_000_000, iat=999_000), "get", "models"
    )
    assert code == 1
    assert "error (UNAUTHENTICATED): token expired" in out

    entries, _ = await registry.service.list_audit(kind="Model")
    assert [(e.actor, e.action) for e in entries] == [("jwt:dave", "create")]
