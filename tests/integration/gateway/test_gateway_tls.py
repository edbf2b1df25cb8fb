"""TLS at the edge: HAProxy terminates TLS on the public gRPC and REST ports, with
real Triton replicas behind, API keys from the registry and optional client
certificates mapped to scopes. Clients are the real ones: tritonclient over gRPC,
curl over REST, ``openssl s_client`` for the protocol scan."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import pathlib
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
import pytest_asyncio
import tritonclient.grpc as grpcclient
from cryptography import x509
from tritonclient.utils import InferenceServerException

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.core import pki
from matrixinfer.gateway.domain.auth import CLIENT_CERT_HEADER
from matrixinfer.gateway.main import GatewayApp
from tests.integration.conftest import (
    IRIS_REST_BODY,
    Platform,
    iris_manifests,
    start_gateway,
)

pytestmark = pytest.mark.timeout(240)

# -- a throwaway PKI ------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: pathlib.Path
    key: pathlib.Path
    serial: int


class Ca:
    """A CA of its own (core's pki) in ``folder/<name>``."""

    def __init__(self, folder: pathlib.Path, name: str) -> None:
        self.folder = folder / name
        self.authority = pki.create_ca(self.folder, name)
        self.path = self.authority.cert_path
        self._issued = 0

    def issue(self, cn: str, server: bool = False) -> Issued:
        """A client certificate naming ``cn`` (no SAN), or a server one for
        localhost and 127.0.0.1."""
        self._issued += 1
        files = pki.issue(
            self.authority,
            f"{cn.replace(' ', '_')}-{self._issued}",
            self.folder,
            sans=["localhost", "127.0.0.1"] if server else [],
            ip_addresses=True,
            common_name=cn,
            usage="server" if server else "client",
            days=1,
        )
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        return Issued(files.cert, files.key, cert.serial_number)


@dataclass
class Edge:
    app: GatewayApp
    folder: pathlib.Path
    ca: Ca
    server: Issued
    #: where the gateway reads its certificate (rotations replace these files)
    cert_file: pathlib.Path
    key_file: pathlib.Path
    key: str  # an API key with infer:iris
    billing: Issued  # client certificate mapped to infer:iris
    operator: Issued  # mapped to admin only
    stranger: Issued  # signed by the trusted CA, mapped to nothing
    rogue: Issued  # signed by a CA the gateway does not trust

    @property
    def grpc_port(self) -> int:
        return self.app.dataplane.ports.grpc

    @property
    def http_port(self) -> int:
        return self.app.dataplane.ports.http


CLIENT_SCOPES = {
    "billing": ["infer:iris", "tenant:team-b"],
    "operator": ["admin"],
}


@pytest_asyncio.fixture
async def edge(platform: Platform, tmp_path: pathlib.Path) -> AsyncIterator[Edge]:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = Ca(folder, "edge")
    server = ca.issue("localhost", server=True)
    cert_file, key_file = folder / "gateway.crt", folder / "gateway.key"
    shutil.copy(server.cert, cert_file)
    shutil.copy(server.key, key_file)
    app = await start_gateway(
        platform,
        auth_mode="required",
        edge_tls_cert_file=cert_file,
        edge_tls_key_file=key_file,
        edge_tls_client_ca_file=ca.path,
        edge_tls_client_scopes=CLIENT_SCOPES,
        edge_tls_reload_s=0.2,
    )
    try:
        await platform.apply(iris_manifests())
        await platform.wait_for(
            lambda i: i is not None and i.status.ready_replicas == 1
        )
        created = await platform.stub.CreateApiKey(
            rpb.CreateApiKeyRequest(subject="app", scopes=["infer:iris"])
        )
        for _ in range(200):  # keys and routes arrive through Watch
            if (
                created.api_key.metadata.name in app.routes.api_keys.records
                and app.routes.table.routed_replicas("iris") > 0
            ):
                break
            await asyncio.sleep(0.05)
        yield Edge(
            app,
            folder,
            ca,
            server,
            cert_file,
            key_file,
            created.secret,
            ca.issue("billing"),
            ca.issue("operator"),
            ca.issue("stranger"),
            Ca(folder, "rogue").issue("billing"),
        )
    finally:
        await app.stop(0)


# -- clients ----------------------------------------------------------------------


def triton_infer(
    e: Edge, key: str | None = None, client: Issued | None = None
) -> npt.NDArray[np.int64]:
    """One iris inference with tritonclient over TLS (blocking)."""
    triton = grpcclient.InferenceServerClient(
        f"127.0.0.1:{e.grpc_port}",
        ssl=True,
        root_certificates=str(e.ca.path),
        private_key=str(client.key) if client else None,
        certificate_chain=str(client.cert) if client else None,
    )
    try:
        x = grpcclient.InferInput("X", [1, 4], "FP32")
        x.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
        headers = {"x-api-key": key} if key else None
        result = triton.infer("iris", [x], headers=headers, client_timeout=20)
        label: npt.NDArray[np.int64] | None = result.as_numpy("label")
        assert label is not None
        return label
    finally:
        triton.close()


def triton_error(
    e: Edge, key: str | None = None, client: Issued | None = None
) -> InferenceServerException:
    try:
        triton_infer(e, key, client)
    except InferenceServerException as error:
        return error
    raise AssertionError("the call was not refused")


@dataclass(frozen=True)
class Curl:
    code: int  # curl's exit status (0: a response came; 35/56: TLS refused)
    status: int  # HTTP status, 0 without a response
    body: str
    http_version: str


def curl(
    e: Edge,
    path: str = "/v2/models/iris/infer",
    key: str | None = None,
    client: Issued | None = None,
    headers: tuple[str, ...] = (),
    http2: bool = False,
) -> Curl:
    """curl over TLS to the REST port, trusting the edge CA only (blocking)."""
    args = [
        "curl",
        "-s",
        "--max-time",
        "20",
        "--cacert",
        str(e.ca.path),
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{http_version}",
        "--http2" if http2 else "--http1.1",
    ]
    if path.endswith("/infer"):
        args += ["-H", "content-type: application/json"]
        args += ["-d", json.dumps(IRIS_REST_BODY)]
    if key:
        args += ["-H", f"x-api-key: {key}"]
    for header in headers:
        args += ["-H", header]
    if client:
        args += ["--cert", str(client.cert), "--key", str(client.key)]
    args.append(f"https://localhost:{e.http_port}{path}")
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    body, _, tail = done.stdout.rpartition("\n")
    status, _, version = tail.partition(" ")
    return Curl(done.returncode, int(status or 0), body, version)


def served_serial(port: int, ca: Ca) -> int:
    """The serial of the certificate a new TLS connection gets."""
    context = ssl.create_default_context(cafile=str(ca.path))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# -- tests --------------------------------------------------------------------------


async def test_tritonclient_and_curl_infer_over_tls_and_plaintext_is_refused(
    edge: Edge,
) -> None:
    # gRPC: a real tritonclient with ssl=True and the CA as root certificates.
    label = await asyncio.to_thread(triton_infer, edge, edge.key)
    assert label.ravel().tolist() == [2]
    error = await asyncio.to_thread(triton_error, edge)
    assert error.status() == "StatusCode.UNAUTHENTICATED"
    # REST: curl --cacert, HTTP/1.1 and h2.
    for http2 in (False, True):
        answer = await asyncio.to_thread(curl, edge, key=edge.key, http2=http2)
        assert (answer.code, answer.status) == (0, 200), answer
        assert answer.http_version == ("2" if http2 else "1.1")
        assert json.loads(answer.body)["outputs"][0]["data"] == [2]
    for http2 in (False, True):  # h2: the answer, not a reset stream
        answer = await asyncio.to_thread(curl, edge, http2=http2)
        assert (answer.code, answer.status) == (0, 401), answer
    # The public ports speak TLS only.
    plain = grpcclient.InferenceServerClient(f"127.0.0.1:{edge.grpc_port}")
    with pytest.raises(InferenceServerException):
        await asyncio.to_thread(plain.is_server_live, None, 5)
    plain.close()
    conn = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=5)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        conn.request("GET", "/v2/health/ready")
        if conn.getresponse().status < 400:  # never a served answer
            raise AssertionError("plaintext was answered")
    conn.close()


async def test_client_certificates_map_to_scopes(edge: Edge) -> None:
    # A mapped certificate infers without a key, over gRPC and REST.
    label = await asyncio.to_thread(triton_infer, edge, None, edge.billing)
    assert label.ravel().tolist() == [2]
    answer = await asyncio.to_thread(curl, edge, client=edge.billing)
    assert (answer.status, json.loads(answer.body)["outputs"][0]["data"]) == (200, [2])
    # Trusted but unmapped: refused as a credential.
    error = await asyncio.to_thread(triton_error, edge, None, edge.stranger)
    assert error.status() == "StatusCode.UNAUTHENTICATED"
    assert "client certificate not accepted" in (error.message() or "")
    answer = await asyncio.to_thread(curl, edge, client=edge.stranger)
    assert answer.status == 401
    # Mapped to other scopes: the model is not allowed.
    error = await asyncio.to_thread(triton_error, edge, None, edge.operator)
    assert error.status() == "StatusCode.PERMISSION_DENIED"
    # Signed by a CA the gateway does not trust: the handshake fails (same CN).
    answer = await asyncio.to_thread(curl, edge, client=edge.rogue)
    assert answer.code != 0 and answer.status == 0, answer
    error = await asyncio.to_thread(triton_error, edge, None, edge.rogue)
    assert error.status() == "StatusCode.UNAVAILABLE"
    # A credential header takes precedence over the certificate.
    answer = await asyncio.to_thread(curl, edge, key=edge.key, client=edge.stranger)
    assert answer.status == 200


async def test_client_certificates_reach_the_slow_path_and_cannot_be_forged(
    edge: Edge,
) -> None:
    """The admin API is Python's (the slow path): it learns the certificate from
    HAProxy, never from the client."""
    path = "/apis/v1/namespaces/default/models"
    answer = await asyncio.to_thread(curl, edge, path, client=edge.operator)
    assert answer.status == 200, answer
    answer = await asyncio.to_thread(curl, edge, path, client=edge.billing)
    assert answer.status == 403
    answer = await asyncio.to_thread(curl, edge, path, client=edge.stranger)
    assert answer.status == 401
    # A client writing the header itself (with or without a certificate).
    operator_hash = hashlib.sha256(b"operator").hexdigest()
    forged = f"{CLIENT_CERT_HEADER}: guess:{operator_hash}"
    answer = await asyncio.to_thread(curl, edge, path, headers=(forged,))
    assert answer.status == 401
    answer = await asyncio.to_thread(
        curl, edge, path, client=edge.billing, headers=(forged,)
    )
    assert answer.status == 403


async def test_certificate_rotation_keeps_connections_and_new_ones_get_it(
    edge: Edge,
) -> None:
    worker = await edge.app.dataplane.process.runtime.worker_pid()
    reloads = edge.app.dataplane.reloads
    assert served_serial(edge.http_port, edge.ca) == edge.server.serial
    # An established keep-alive connection, and a gRPC channel.
    context = ssl.create_default_context(cafile=str(edge.ca.path))
    conn = http.client.HTTPSConnection(
        "localhost", edge.http_port, context=context, timeout=10
    )
    body = json.dumps(IRIS_REST_BODY)
    headers = {"content-type": "application/json", "x-api-key": edge.key}

    def rest_call() -> int:
        conn.request("POST", "/v2/models/iris/infer", body, headers)
        response = conn.getresponse()
        response.read()
        return response.status

    assert await asyncio.to_thread(rest_call) == 200
    established = conn.sock
    triton = grpcclient.InferenceServerClient(
        f"127.0.0.1:{edge.grpc_port}", ssl=True, root_certificates=str(edge.ca.path)
    )
    x = grpcclient.InferInput("X", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    headers_g = {"x-api-key": edge.key}
    await asyncio.to_thread(triton.infer, "iris", [x], headers=headers_g)

    # Rotate: new files in place (key first, then the certificate).
    fresh = edge.ca.issue("localhost", server=True)
    shutil.copy(fresh.key, edge.key_file)
    shutil.copy(fresh.cert, edge.cert_file)
    for _ in range(100):
        if edge.app.dataplane.cert_updates >= 1:
            break
        await asyncio.sleep(0.1)
    assert edge.app.dataplane.cert_updates == 1

    # The established connection keeps working (same socket, old certificate)...
    assert await asyncio.to_thread(rest_call) == 200
    assert conn.sock is established
    der = conn.sock.getpeercert(binary_form=True)
    assert isinstance(der, bytes)
    assert x509.load_der_x509_certificate(der).serial_number == edge.server.serial
    await asyncio.to_thread(triton.infer, "iris", [x], headers=headers_g)
    # ...new connections get the new certificate, and HAProxy never reloaded.
    assert served_serial(edge.http_port, edge.ca) == fresh.serial
    assert served_serial(edge.grpc_port, edge.ca) == fresh.serial
    assert await edge.app.dataplane.process.runtime.worker_pid() == worker
    assert edge.app.dataplane.reloads == reloads
    label = await asyncio.to_thread(triton_infer, edge, edge.key)
    assert label.ravel().tolist() == [2]

    # A key that does not match the certificate is refused; the new one stays.
    other = edge.ca.issue("localhost", server=True)
    shutil.copy(other.cert, edge.cert_file)  # the key file still holds fresh's
    for _ in range(100):
        if "TLS certificate" in edge.app.dataplane.last_error:
            break
        await asyncio.sleep(0.1)
    assert "TLS certificate" in edge.app.dataplane.last_error
    assert served_serial(edge.http_port, edge.ca) == fresh.serial
    # Its key arrives: loaded.
    shutil.copy(other.key, edge.key_file)
    for _ in range(100):
        if edge.app.dataplane.cert_updates >= 2:
            break
        await asyncio.sleep(0.1)
    assert served_serial(edge.http_port, edge.ca) == other.serial
    # A reload (a structural change) keeps serving the newest certificate.
    await edge.app.dataplane.reload()
    assert served_serial(edge.grpc_port, edge.ca) == other.serial
    conn.close()
    triton.close()


# -- the scan -------------------------------------------------------------------------


def s_client(port: int, *args: str) -> tuple[bool, str]:
    """(handshake completed, openssl's output)."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
    )
    text = done.stdout + done.stderr
    completed = done.returncode == 0 and "Cipher is (NONE)" not in text
    return completed, text


async def test_tls_scan_with_openssl_s_client(edge: Edge) -> None:
    for port in (edge.grpc_port, edge.http_port):
        ca = ("-CAfile", str(edge.ca.path), "-verify_return_error")
        for version in ("-tls1_3", "-tls1_2"):
            ok, text = await asyncio.to_thread(s_client, port, version, *ca)
            assert ok, text
            assert "Verify return code: 0 (ok)" in text
        # TLS 1.1 and 1.0: offered at security level 0 (this OpenSSL refuses to
        # offer them otherwise); the server must answer "protocol version".
        for version in ("-tls1_1", "-tls1"):
            ok, text = await asyncio.to_thread(
                s_client, port, version, "-cipher", "DEFAULT@SECLEVEL=0"
            )
            assert not ok, text
            if "no protocols available" in text or "unsupported protocol" in text:
                print(f"{version}: this OpenSSL cannot offer it; not scanned: {text}")
            else:
                assert "alert protocol version" in text, text
        # Weak and non-AEAD ciphers: no handshake.
        for weak in (
            "RC4:3DES:NULL:EXPORT:aNULL:eNULL:@SECLEVEL=0",
            "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:AES128-SHA:AES256-SHA",
            "ECDHE-ECDSA-AES128-SHA256:AES128-GCM-SHA256",  # CBC; no forward secrecy
        ):
            ok, text = await asyncio.to_thread(
                s_client, port, "-tls1_2", "-cipher", weak
            )
            assert not ok, (weak, text)
    # ALPN: h2 on the gRPC port; h2 or HTTP/1.1 on REST.
    _, text = await asyncio.to_thread(s_client, edge.grpc_port, "-alpn", "h2")
    assert "ALPN protocol: h2" in text
    for proto in ("h2", "http/1.1"):
        _, text = await asyncio.to_thread(s_client, edge.http_port, "-alpn", proto)
        assert f"ALPN protocol: {proto}" in text
