"""`up --auth` keeps one admin API key in the state folder (mode 0600), made once
through the registry; `up --tls` keeps a local CA and the gateway's public
certificate there, reused across starts; TLS is forced beyond loopback."""

from __future__ import annotations

import ipaddress
import pathlib
import stat
from dataclasses import dataclass, field

import grpc
import pytest
from cryptography import x509

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.cli.up import (
    ADMIN_KEY_FILE,
    EDGE_TLS_DIR,
    admin_api_key,
    connect_host,
    edge_certificate,
    is_loopback,
)


class NotFound(grpc.RpcError):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.NOT_FOUND


@dataclass
class FakeRegistry:
    """CreateApiKey and Get of ApiKey, as the registry answers them."""

    revoked: set[str] = field(default_factory=set)
    keys: dict[str, str] = field(default_factory=dict)  # key id → secret

    def CreateApiKey(  # noqa: N802 - the RPC's name
        self, request: rpb.CreateApiKeyRequest, timeout: float
    ) -> rpb.CreateApiKeyResponse:
        assert set(request.scopes) == {"admin", "infer:*"}
        key_id = f"k{len(self.keys)}"
        secret = f"mik_{key_id}_{'s' * 40}"
        self.keys[key_id] = secret
        response = rpb.CreateApiKeyResponse(secret=secret)
        response.api_key.metadata.name = key_id
        return response

    def Get(self, request: rpb.GetRequest, timeout: float) -> pb.Resource:  # noqa: N802
        assert request.kind == "ApiKey"
        if request.name not in self.keys:
            raise NotFound()
        got = pb.Resource()
        got.api_key.metadata.name = request.name
        got.api_key.spec.revoked = request.name in self.revoked
        return got


def test_the_admin_key_is_made_once_and_kept_with_mode_0600(
    tmp_path: pathlib.Path,
) -> None:
    registry = FakeRegistry()
    secret, made = admin_api_key(registry, tmp_path)  # type: ignore[arg-type]
    assert made and secret.startswith("mik_k0_")
    path = tmp_path / ADMIN_KEY_FILE
    assert path.read_text() == secret + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # A later start reuses it: nothing made, nothing to print.
    assert admin_api_key(registry, tmp_path) == (secret, False)  # type: ignore[arg-type]
    assert list(registry.keys) == ["k0"]


def test_a_key_the_registry_no_longer_has_is_replaced(tmp_path: pathlib.Path) -> None:
    registry = FakeRegistry()
    first, _ = admin_api_key(registry, tmp_path)  # type: ignore[arg-type]
    registry.revoked.add("k0")
    second, made = admin_api_key(registry, tmp_path)  # type: ignore[arg-type]
    assert made and second != first
    # A fresh registry (a new database) does not know the stored key either.
    third, made = admin_api_key(FakeRegistry(), tmp_path)  # type: ignore[arg-type]
    assert made and (tmp_path / ADMIN_KEY_FILE).read_text().strip() == third
    assert stat.S_IMODE((tmp_path / ADMIN_KEY_FILE).stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),  # noqa: S104 - every interface
        ("::", False),
        ("192.168.1.10", False),
        ("myhost.example", False),
    ],
)
def test_tls_is_forced_beyond_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_up_reaches_a_wildcard_bind_on_loopback() -> None:
    assert connect_host("0.0.0.0") == "127.0.0.1"  # noqa: S104
    assert connect_host("10.1.2.3") == "10.1.2.3"


def _sans(cert: pathlib.Path) -> list[str]:
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    ext = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(name.value) for name in ext.value]


def test_the_edge_certificate_is_made_once_and_names_the_host(
    tmp_path: pathlib.Path,
) -> None:
    ca, cert, key = edge_certificate(tmp_path, "127.0.0.1")
    assert ca == tmp_path / EDGE_TLS_DIR / "ca.crt"
    assert stat.S_IMODE((tmp_path / EDGE_TLS_DIR).stat().st_mode) == 0o700
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    names = _sans(cert)
    assert "localhost" in names and "127.0.0.1" in names
    issued = x509.load_pem_x509_certificate(cert.read_bytes())
    issued.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.read_bytes()))
    # Reused as long as nothing changed.
    again = edge_certificate(tmp_path, "127.0.0.1")
    assert again == (ca, cert, key)
    assert x509.load_pem_x509_certificate(cert.read_bytes()) == issued
    # Another host: a new certificate from the same CA, naming it.
    edge_certificate(tmp_path, "10.1.2.3")
    reissued = x509.load_pem_x509_certificate(cert.read_bytes())
    assert reissued.serial_number != issued.serial_number
    assert str(ipaddress.ip_address("10.1.2.3")) in _sans(cert)
    reissued.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.read_bytes()))
