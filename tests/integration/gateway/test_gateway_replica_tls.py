"""Mutual TLS from the gateway to the Triton replicas' gRPC port (docs/security.md,
"Service-to-service mTLS"), with the PKI `matrixinfer up` makes, a real registry,
controller, tritonserver and HAProxy: the controller starts Triton with
`--grpc-use-ssl-mutual`, HAProxy (the fast path) and the slow path present the
gateway's certificate and check the replica's identity, and Triton refuses a
client without a certificate of the CA. REST and the health checks stay on
Triton's plaintext HTTP port."""

from __future__ import annotations

import asyncio
import pathlib
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core import pki
from matrixinfer.core.grpc.tls import ClientTls
from matrixinfer.gateway import main as gateway_main
from matrixinfer.gateway.adapters.dataplane.manager import replica_client_pem
from matrixinfer.gateway.adapters.dataplane.render import REPLICA_CLIENT_CERT
from matrixinfer.gateway.main import GatewayApp
from matrixinfer.triton.protocol import service_pb2, service_pb2_grpc
from tests.integration.conftest import (
    IRIS_REST_BODY,
    Platform,
    carried_by,
    iris_manifests,
    running_platform,
    start_gateway,
    wait_routed,
)
from tests.integration.gateway.test_gateway_mirror import (
    deploy_mirrored,
    ready,
    wait_mirror_routed,
)

pytestmark = pytest.mark.timeout(240)

REPLICA_NAME = pki.identity_name(pki.REPLICA)


def tls_settings(files: pki.CertFiles, prefix: str = "") -> dict[str, object]:
    return {
        f"{prefix}tls_cert_file": files.cert,
        f"{prefix}tls_key_file": files.key,
        f"{prefix}tls_ca_file": files.ca,
    }


@dataclass
class MtlsPlatform:
    platform: Platform
    files: dict[str, pki.CertFiles]
    directory: pathlib.Path

    async def gateway(self) -> GatewayApp:
        """A gateway with its own certificate (mTLS to the registry and, `auto`,
        to the replicas); auth off."""
        return await start_gateway(
            self.platform, None, **tls_settings(self.files["gateway"])
        )


@pytest_asyncio.fixture
async def mtls(tmp_path: pathlib.Path) -> AsyncIterator[MtlsPlatform]:
    """Registry and controller with `up`'s PKI: mTLS between them, and every
    replica's gRPC port mTLS only."""
    directory = tmp_path / "pki"
    files = pki.ensure_pki(directory)
    async with running_platform(
        tmp_path,
        registry_tls=tls_settings(files["registry"]),
        admin=ClientTls(files["admin"], "registry"),
        **tls_settings(files["controller"]),
        **tls_settings(files["replica"], "replica_"),
    ) as platform:
        yield MtlsPlatform(platform, files, directory)


def iris_input() -> triton_aio.InferInput:
    tensor = triton_aio.InferInput("X", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    return tensor


async def infer_iris(client: triton_aio.InferenceServerClient) -> None:
    result = await client.infer("iris", [iris_input()])
    labels = result.as_numpy("label")
    assert labels is not None and labels.reshape(-1).tolist() == [2]


async def server_live(
    address: str, credentials: grpc.ChannelCredentials | None
) -> grpc.StatusCode:
    """What a client of the replica's gRPC port gets for ServerLive."""
    if credentials is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(
            address,
            credentials,
            options=[("grpc.ssl_target_name_override", REPLICA_NAME)],
        )
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=5)
        assert response.live
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as e:
        return e.code()
    finally:
        await channel.close()


def triton_client(
    endpoint: pb.Endpoint, files: pki.CertFiles
) -> triton_aio.InferenceServerClient:
    """A client of one replica presenting ``files`` (a certificate of the CA)."""
    credentials = grpc.ssl_channel_credentials(
        files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes()
    )
    return triton_aio.InferenceServerClient(
        f"{endpoint.address}:{endpoint.grpc_port}",
        creds=credentials,
        channel_args=[("grpc.ssl_target_name_override", REPLICA_NAME)],
    )


async def test_haproxy_reaches_the_replica_over_mtls_and_triton_refuses_plaintext(
    mtls: MtlsPlatform,
) -> None:
    platform = mtls.platform
    await platform.apply(iris_manifests())
    infer = await platform.wait_for(ready, 90)
    assert infer is not None
    endpoint = infer.status.endpoints[0]
    replica = f"{endpoint.address}:{endpoint.grpc_port}"
    gateway_files = mtls.files["gateway"]
    ca = gateway_files.ca.read_bytes()

    # Triton's gRPC port speaks mTLS only: a plaintext client and a TLS client
    # without a certificate are refused in the handshake; the gateway's
    # certificate is taken, and Triton's names the replicas' identity.
    assert await server_live(replica, None) == grpc.StatusCode.UNAVAILABLE
    without_cert = grpc.ssl_channel_credentials(ca)
    assert await server_live(replica, without_cert) == grpc.StatusCode.UNAVAILABLE
    with_cert = grpc.ssl_channel_credentials(
        ca, gateway_files.key.read_bytes(), gateway_files.cert.read_bytes()
    )
    assert await server_live(replica, with_cert) == grpc.StatusCode.OK

    app = await mtls.gateway()
    client = triton_aio.InferenceServerClient(app.address)
    try:
        await wait_routed(app)
        # HAProxy carries it (its gRPC backend, not the slow path) over mTLS: the
        # health checks on Triton's plaintext HTTP port mark the replica up.
        carried = await carried_by(app, "", lambda: infer_iris(client))
        assert sorted(carried) == [
            ("g:default:iris:iris", "BACKEND"),
            ("g:default:iris:iris", "r1"),
            ("grpc", "FRONTEND"),
        ]
        # REST goes to Triton's HTTP port, plaintext.
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{app.http_url}/v2/models/iris/infer", json=IRIS_REST_BODY
            ) as response:
                assert response.status == 200
                body = await response.json()
        assert body["outputs"][0]["data"] == [2]

        # HAProxy's copy of the gateway's certificate and key: one file, 0600.
        plane = app.dataplane
        pem_path = plane.directory / REPLICA_CLIENT_CERT
        assert stat.S_IMODE(pem_path.stat().st_mode) == 0o600
        assert pem_path.read_text() == replica_client_pem(gateway_files)[0]

        # A rotated gateway certificate: written again, HAProxy reloaded, and
        # inference goes on over mTLS with the new one. Half done (the new
        # certificate before its key), it is not taken yet.
        authority = pki.Authority(mtls.directory / "ca.crt", mtls.directory / "ca.key")
        before = pem_path.read_text()
        new = pki.issue(authority, "gateway", mtls.directory / "new")
        reloads = plane.reloads
        gateway_files.cert.write_bytes(new.cert.read_bytes())
        assert await plane.update_replica_certificate() is False
        assert pem_path.read_text() == before and plane.reloads == reloads
        gateway_files.key.write_bytes(new.key.read_bytes())
        assert await plane.update_replica_certificate() is True
        assert plane.reloads == reloads + 1
        assert pem_path.read_text() != before
        assert pem_path.read_text() == replica_client_pem(gateway_files)[0]
        assert await plane.update_replica_certificate() is False  # unchanged
        await wait_routed(app)
        for _ in range(50):  # the new worker's first health check
            try:
                await infer_iris(client)
                break
            except Exception:
                await asyncio.sleep(0.1)
        assert ("g:default:iris:iris", "r1") in await carried_by(
            app, "g:", lambda: infer_iris(client)
        )
    finally:
        await client.close()
        await app.stop(0)


async def inference_count(client: triton_aio.InferenceServerClient) -> int:
    stats = await client.get_inference_statistics("iris", as_json=True)
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


async def test_the_slow_path_reaches_the_replicas_over_mtls(
    mtls: MtlsPlatform,
) -> None:
    """A mirrored rule is carried by the gateway's slow path: its channels to the
    primary and to the shadow replica present the gateway's certificate."""
    primary, shadow = await deploy_mirrored(mtls.platform)
    gateway_files = mtls.files["gateway"]
    primary_client = triton_client(primary.status.endpoints[0], gateway_files)
    shadow_client = triton_client(shadow.status.endpoints[0], gateway_files)
    app = await mtls.gateway()
    client = triton_aio.InferenceServerClient(app.address)
    try:
        await wait_mirror_routed(app)
        shadow_before = await inference_count(shadow_client)
        primary_before = await inference_count(primary_client)

        async def five() -> None:
            for _ in range(5):
                await infer_iris(client)

        assert ("slow_grpc", "gateway") in await carried_by(app, "slow", five)
        for _ in range(100):  # mirrored copies are sent in the background
            if await inference_count(shadow_client) - shadow_before == 5:
                break
            await asyncio.sleep(0.05)
        assert await inference_count(shadow_client) - shadow_before == 5
        assert await inference_count(primary_client) - primary_before == 5
    finally:
        await client.close()
        await primary_client.close()
        await shadow_client.close()
        await app.stop(0)


async def test_a_replica_without_the_expected_identity_is_refused_by_haproxy(
    mtls: MtlsPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HAProxy checks the name in the replica's certificate (verifyhost), not
    only its CA: a gateway that expects another identity than the replica's
    reaches none, and says so as a gRPC status."""
    await mtls.platform.apply(iris_manifests())
    await mtls.platform.wait_for(ready, 90)
    other = pki.identity_name("registry")  # signed by the same CA, another name
    monkeypatch.setattr(gateway_main, "identity_name", lambda _: other)
    app = await mtls.gateway()
    client = triton_aio.InferenceServerClient(app.address)
    try:
        await wait_routed(app)
        config = app.dataplane.process.config_path.read_text()
        assert f"verifyhost {other} " in config
        with pytest.raises(InferenceServerException) as caught:
            await infer_iris(client)
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        assert caught.value.message() == "no replica could take the request"
    finally:
        await client.close()
        await app.stop(0)
