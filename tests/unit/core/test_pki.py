"""The local CA `matrixinfer up` makes: created once with private keys only the owner
can read, reused on later starts, certificates reissued near expiry, identity in the
subjectAltName only; and the CLI settings that carry certificates."""

from __future__ import annotations

import datetime
import pathlib
import stat
from typing import IO

import pytest
from click.testing import CliRunner
from cryptography import x509

from matrixinfer.cli.config import ConfigError, local_up_path, resolve
from matrixinfer.cli.up import (
    Service,
    _lock_state,
    forget_local_up,
    local_pki,
    record_local_up,
    tls_env,
    up,
)
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.core import pki
from matrixinfer.core.ports import free_ports
from matrixinfer.gateway.settings import GatewaySettings


def mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sans(path: pathlib.Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(v) for v in ext.value.get_values_for_type(x509.DNSName)] + [
        str(v) for v in ext.value.get_values_for_type(x509.IPAddress)
    ]


def test_up_creates_the_pki_once_with_private_keys_0600(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    first = local_pki(state)
    assert sorted(first) == [
        "admin",
        "autoscaler",
        "controller",
        "gateway",
        "registry",
        "replica",
    ]
    directory = state / "pki"
    assert mode(directory) == 0o700
    assert mode(directory / "ca.key") == 0o600
    assert [mode(f.key) for f in first.values()] == [0o600] * 6
    contents = {p.name: p.read_bytes() for p in directory.iterdir()}

    second = local_pki(state)  # the next `up`
    assert second == first
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == contents


def test_identity_is_the_service_name_not_an_address(tmp_path: pathlib.Path) -> None:
    files = pki.ensure_pki(tmp_path)
    assert sans(files["registry"].cert) == ["registry.matrixinfer.internal"]
    assert sans(files["admin"].cert) == ["admin.matrixinfer.internal"]
    # The replicas' (Triton's gRPC port) is a server certificate only: a replica's
    # key is no client of the services.
    assert sans(files["replica"].cert) == ["replica.matrixinfer.internal"]
    replica = x509.load_pem_x509_certificate(files["replica"].cert.read_bytes())
    usage = replica.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(usage.value) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert pki.service_of("controller.matrixinfer.internal") == "controller"
    assert pki.service_of("a.controller.matrixinfer.internal") is None
    assert pki.service_of("localhost") is None


def test_issue_names_ip_addresses_only_when_asked(tmp_path: pathlib.Path) -> None:
    authority = pki.create_ca(tmp_path, "other")
    names = ["localhost", "127.0.0.1", "::1"]

    server = pki.issue(
        authority, "edge", tmp_path, sans=names, ip_addresses=True, usage="server"
    )
    plain = pki.issue(authority, "plain", tmp_path, sans=names)
    client = pki.issue(authority, "user", tmp_path, sans=[], common_name="billing")

    def load(files: pki.CertFiles) -> x509.Certificate:
        return x509.load_pem_x509_certificate(files.cert.read_bytes())

    ext = load(server).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert ext.value == pki.subject_alt_name(names, ip_addresses=True)
    assert [str(ip) for ip in ext.value.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "::1",
    ]
    assert (
        load(plain)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value.get_values_for_type(x509.DNSName)
        == names
    )
    usage = load(server).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(usage.value) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    # A client certificate of another CA: its CN, no subjectAltName.
    cert = load(client)
    assert cert.subject.rfc4514_string() == "CN=billing"
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_a_certificate_near_expiry_is_reissued(tmp_path: pathlib.Path) -> None:
    files = pki.ensure_pki(tmp_path)
    authority = pki.Authority(tmp_path / "ca.crt", tmp_path / "ca.key")
    pki.issue(authority, "gateway", tmp_path, days=10)  # inside the 30-day window
    short = files["gateway"].cert.read_bytes()
    kept = files["registry"].cert.read_bytes()

    again = pki.ensure_pki(tmp_path)
    renewed = x509.load_pem_x509_certificate(again["gateway"].cert.read_bytes())
    assert again["gateway"].cert.read_bytes() != short
    left = renewed.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert left > datetime.timedelta(days=80)
    assert again["registry"].cert.read_bytes() == kept


def test_a_certificate_of_another_ca_is_reissued(tmp_path: pathlib.Path) -> None:
    pki.ensure_pki(tmp_path)
    other = pki.create_ca(tmp_path / "other")
    pki.issue(other, "controller", tmp_path)
    again = pki.ensure_pki(tmp_path)
    cert = x509.load_pem_x509_certificate(again["controller"].cert.read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if not


def test_up_passes_each_service_its_files(tmp_path: pathlib.Path) -> None:
    files = local_pki(tmp_path)
    env = tls_env("CONTROLLER", files["controller"])
    assert env == {
        "MATRIXINFER_CONTROLLER_TLS_CERT_FILE": str(tmp_path / "pki/controller.crt"),
        "MATRIXINFER_CONTROLLER_TLS_KEY_FILE": str(tmp_path / "pki/controller.key"),
        "MATRIXINFER_CONTROLLER_TLS_CA_FILE": str(tmp_path / "pki/ca.crt"),
    }


class _Started(Exception):
    """Raised instead of starting the services: the test reads what `up` built."""


def test_up_starts_the_replicas_with_mtls_and_the_gateway_uses_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No extra step: the controller `up` starts gets the replica certificate (its
    Triton processes then take mTLS only on gRPC), and the gateway, with its own
    certificate, speaks mTLS to them (`replica_tls` auto)."""
    built: list[Service] = []

    def capture(services: list[Service], console: object) -> None:
        built.extend(services)
        raise _Started()

    monkeypatch.setattr("matrixinfer.cli.up.Supervisor", capture)
    locks: list[IO[str]] = []

    def lock(state: pathlib.Path) -> IO[str]:
        locks.append(_lock_state(state))
        return locks[-1]

    monkeypatch.setattr("matrixinfer.cli.up._lock_state", lock)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    ports = free_ports(6, "127.0.0.1")
    options = (
        "--grpc-port",
        "--http-port",
        "--registry-port",
        "--kube-port",
        "--controller-port",
        "--autoscaler-port",
    )
    args = [a for pair in zip(options, map(str, ports), strict=True) for a in pair]
    try:
        result = CliRunner().invoke(
            up, [*args, "--state-dir", str(tmp_path / "state"), "--no-examples"]
        )
    finally:
        for handle in locks:
            handle.close()
    assert isinstance(result.exception, _Started), result.output
    env = {s.name: s.env for s in built}
    directory = tmp_path / "state" / "pki"
    assert tls_env(
        "CONTROLLER_REPLICA", pki.CertFiles(*(directory / n for n in REPLICA_FILES))
    ) == {k: v for k, v in env["controller"].items() if "_REPLICA_TLS_" in k}
    for name, value in env["controller"].items():
        monkeypatch.setenv(name, value)
    controller = ControllerSettings()
    assert controller.replica_tls_files() == pki.CertFiles(
        directory / "replica.crt", directory / "replica.key", directory / "ca.crt"
    )
    for name, value in env["gateway"].items():
        monkeypatch.setenv(name, value)
    gateway = GatewaySettings()
    assert gateway.replica_tls == "auto"
    assert gateway.replica_tls_files() == gateway.tls_files() is not None


REPLICA_FILES = ("replica.crt", "replica.key", "ca.crt")


def test_cli_takes_all_three_tls_files_or_none(tmp_path: pathlib.Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "MATRIXINFER_TLS_CA": "/ca.crt"}
    with pytest.raises(ConfigError, match="set all of tls_ca, tls_cert and tls_key"):
        resolve({}, env)
    env |= {"MATRIXINFER_TLS_CERT": "/c.crt", "MATRIXINFER_TLS_KEY": "/c.key"}
    config = resolve({}, env)
    assert config.tls == (
        pathlib.Path("/ca.crt"),
        pathlib.Path("/c.crt"),
        pathlib.Path("/c.key"),
    )


def test_cli_uses_the_admin_certificate_of_a_running_up(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    files = local_pki(tmp_path / "state")
    assert resolve({}, env).tls is None  # no `up` running

    record_local_up("127.0.0.1:50051", files["admin"])
    admin = files["admin"]
    assert resolve({}, env).tls == (admin.ca, admin.cert, admin.key)
    # Another registry than the one `up` serves: nothing borrowed.
    assert resolve({"server": "10.0.0.1:50051"}, env).tls is None

    forget_local_up()  # `up` stopped
    assert not local_up_path(env).exists()
    assert resolve({}, env).tls is None
