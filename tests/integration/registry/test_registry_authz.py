"""Authorization of the registry's gRPC API (docs/security.md, "Control-plane
authorization"): API keys with the admin, read and per-namespace scopes, on a real
registry that speaks mTLS (so auth is on by default), and on one where auth is on
without TLS."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.core import pki
from matrixinfer.core.grpc.channel import create_channel
from matrixinfer.core.grpc.tls import ClientTls
from matrixinfer.registry.main import RegistryApp
from tests.conftest import registry_settings, seed_manifest

pytestmark = pytest.mark.timeout(120)

IN_TEAM_A = seed_manifest().replace(
    "  name: my-model\n", "  name: my-model\n  namespace: team-a\n"
)


@pytest_asyncio.fixture
async def certs(tmp_path: pathlib.Path) -> dict[str, pki.CertFiles]:
    directory = tmp_path / "pki"
    files = pki.ensure_pki(directory)
    authority = pki.Authority(directory / "ca.crt", directory / "ca.key")
    # A user's certificate: signed by the CA, no service's name, so no scopes of
    # its own; the API key sent with it decides.
    files["user"] = pki.issue(authority, "user", directory / "user")
    return files


@pytest_asyncio.fixture
async def registry(
    tmp_path: pathlib.Path, certs: dict[str, pki.CertFiles]
) -> AsyncIterator[RegistryApp]:
    files = certs["registry"]
    app = await RegistryApp.start(
        registry_settings(
            f"sqlite+aiosqlite:///{tmp_path}/registry.db",
            tls_cert_file=files.cert,
            tls_key_file=files.key,
            tls_ca_file=files.ca,
        )
    )
    try:
        yield app
    finally:
        await app.stop(0)


@pytest_asyncio.fixture
async def as_user(
    registry: RegistryApp, certs: dict[str, pki.CertFiles]
) -> AsyncIterator[registry_pb2_grpc.RegistryStub]:
    channel = create_channel(
        registry.address, tls=ClientTls(certs["user"], "registry"), retry_attempts=1
    )
    async with channel:
        yield registry_pb2_grpc.RegistryStub(channel)


@pytest_asyncio.fixture
async def as_admin(
    registry: RegistryApp, certs: dict[str, pki.CertFiles]
) -> AsyncIterator[registry_pb2_grpc.RegistryStub]:
    """The admin client certificate `matrixinfer up` gives the CLI."""
    channel = create_channel(
        registry.address, tls=ClientTls(certs["admin"], "registry"), retry_attempts=1
    )
    async with channel:
        yield registry_pb2_grpc.RegistryStub(channel)


async def new_key(admin: registry_pb2_grpc.RegistryStub, *scopes: str) -> str:
    response = await admin.CreateApiKey(
        rpb.CreateApiKeyRequest(subject="someone", scopes=list(scopes)), timeout=5
    )
    return str(response.secret)


def key(secret: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", secret),)


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_an_admin_key_applies_and_a_read_only_key_cannot(
    as_admin: registry_pb2_grpc.RegistryStub, as_user: registry_pb2_grpc.RegistryStub
) -> None:
    admin, read = await new_key(as_admin, "admin"), await new_key(as_admin, "read")
    apply = rpb.ApplyRequest(manifest=seed_manifest())

    applied = await as_user.Apply(apply, metadata=key(admin), timeout=5)
    assert [r.action for r in applied.results] == ["created"]

    got = await as_user.Get(
        rpb.GetRequest(kind="Model", name="my-model"), metadata=key(read), timeout=5
    )
    assert got.model.metadata.name == "my-model"
    error = await refused(as_user.Apply(apply, metadata=key(read), timeout=5))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        f"key:{read.split('_')[1]} may not apply Model in namespace default: needs "
        "scope admin or admin:ns/default"
    )


async def test_a_namespace_admin_key_writes_only_its_namespace(
    as_admin: registry_pb2_grpc.RegistryStub, as_user: registry_pb2_grpc.RegistryStub
) -> None:
    team = await new_key(as_admin, "admin:ns/team-a")
    applied = await as_user.Apply(
        rpb.ApplyRequest(manifest=IN_TEAM_A), metadata=key(team), timeout=5
    )
    assert [r.action for r in applied.results] == ["created"]
    listed = await as_user.List(
        rpb.ListRequest(kind="Model", namespace="team-a"), metadata=key(team), timeout=5
    )
    assert [r.model.metadata.name for r in listed.items] == ["my-model"]

    error = await refused(
        as_user.Apply(
            rpb.ApplyRequest(manifest=seed_manifest()), metadata=key(team), timeout=5
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "needs scope admin or admin:ns/default" in error.details()
    error = await refused(
        as_user.List(rpb.ListRequest(kind="Model"), metadata=key(team), timeout=5)
    )
    assert "may not read Model in every namespace: needs scope read or admin" in (
        error.details()
    )
    # Keys grant scopes: a namespace admin minting a global admin key is refused.
    error = await refused(
        as_user.CreateApiKey(
            rpb.CreateApiKeyRequest(subject="x", scopes=["admin"]),
            metadata=key(team),
            timeout=5,
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details().endswith("may not create API keys: needs scope admin")


async def test_inference_keys_and_bare_user_certificates_get_nothing(
    as_admin: registry_pb2_grpc.RegistryStub, as_user: registry_pb2_grpc.RegistryStub
) -> None:
    infer = await new_key(as_admin, "infer:*")
    for metadata in (key(infer), ()):
        error = await refused(
            as_user.Get(
                rpb.GetRequest(kind="Model", name="my-model"),
                metadata=metadata,
                timeout=5,
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs scope read, read:ns/default, admin or admin:ns/default" in (
            error.details()
        )


async def test_a_wrong_or_revoked_key_is_unauthenticated(
    as_admin: registry_pb2_grpc.RegistryStub, as_user: registry_pb2_grpc.RegistryStub
) -> None:
    read = await new_key(as_admin, "read")
    listing = rpb.ListRequest(kind="Model")
    assert (
        list((await as_user.List(listing, metadata=key(read), timeout=5)).items) == []
    )
    wrong = read[:-4] + ("AAAA" if not read.endswith("AAAA") else "BBBB")
    error = await refused(as_user.List(listing, metadata=key(wrong), timeout=5))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid API key",
    )
    await as_admin.RevokeApiKey(
        rpb.RevokeApiKeyRequest(namespace="default", name=read.split("_")[1]), timeout=5
    )
    await asyncio.sleep(1.1)  # the registry re-reads its keys at most every second
    error = await refused(as_user.List(listing, metadata=key(read), timeout=5))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid API key",
    )


async def test_auth_on_without_tls_refuses_anonymous_callers(
    tmp_path: pathlib.Path,
) -> None:
    app = await RegistryApp.start(
        registry_settings(f"sqlite+aiosqlite:///{tmp_path}/r.db", auth_mode="on")
    )
    try:
        # The first key comes from the domain (as `apikey create` with the admin
        # certificate would make it).
        _, secret = await app.service.create_api_key(
            "default", "ops", ["admin"], "", ""
        )
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            error = await refused(stub.List(rpb.ListRequest(kind="Model"), timeout=5))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error.details() == (
                "the registry needs a client certificate or a credential "
                "(authorization: Bearer <API key>, or x-api-key)"
            )
            bearer = (("authorization", f"Bearer {secret}"),)
            listed = await stub.List(
                rpb.ListRequest(kind="Model"), metadata=bearer, timeout=5
            )
            assert list(listed.items) == []
    finally:
        await app.stop(0)


async def test_auth_is_off_by_default_on_plaintext(tmp_path: pathlib.Path) -> None:
    """What every test that starts a registry without credentials relies on."""
    app = await RegistryApp.start(
        registry_settings(f"sqlite+aiosqlite:///{tmp_path}/r.db")
    )
    try:
        assert not app.settings.auth_enforced()
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)
            listed = await stub.List(rpb.ListRequest(kind="Model"), timeout=5)
            assert list(listed.items) == []
    finally:
        await app.stop(0)
