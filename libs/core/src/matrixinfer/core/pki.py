"""A small local certificate authority for mTLS between the services.

``matrixinfer up`` (and the tests) make one CA and one certificate per service in a
folder, with the ``cryptography`` library. A service's identity is the DNS name in
its certificate's subjectAltName, ``<service>.matrixinfer.internal``: clients check
that name (``grpc.ssl_target_name_override``), servers read it from the peer's
certificate. ``localhost`` and IP addresses are deliberately absent, so nothing is
trusted for merely sitting on loopback. (:func:`issue` can name them, for the
certificates of other CAs: `up --tls` makes the gateway's public one with it.)

Keys are ECDSA P-256 and written with mode 0600; certificates are reissued when they
come within ``renew_before`` of expiry, or when the CA changed under them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The DNS suffix of every service identity.
IDENTITY_SUFFIX = ".matrixinfer.internal"
#: The services that talk to each other (and the CLI's admin client certificate).
SERVICES = ("registry", "controller", "autoscaler", "gateway")
ADMIN = "admin"
#: The Triton replicas' gRPC port (``replica.matrixinfer.internal``), which the
#: gateway checks: a server certificate only (no clientAuth usage).
REPLICA = "replica"

CA_DAYS = 3650
CERT_DAYS = 90
RENEW_BEFORE = datetime.timedelta(days=30)


def identity_name(service: str) -> str:
    """The SAN a service's certificate carries: ``registry.matrixinfer.internal``."""
    return f"{service}{IDENTITY_SUFFIX}"


def service_of(san: str) -> str | None:
    """``registry`` for ``registry.matrixinfer.internal``; None for any other name."""
    if not san.endswith(IDENTITY_SUFFIX):
        return None
    name = san[: -len(IDENTITY_SUFFIX)]
    return name if name and "." not in name else None


@dataclass(frozen=True)
class CertFiles:
    """PEM files of one identity: its certificate, its key, and the CA to trust."""

    cert: pathlib.Path
    key: pathlib.Path
    ca: pathlib.Path


@dataclass(frozen=True)
class Authority:
    cert_path: pathlib.Path
    key_path: pathlib.Path

    def load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = serialization.load_pem_private_key(
            self.key_path.read_bytes(), password=None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.key_path}: not an EC private key")
        return cert, key


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: pathlib.Path, data: bytes, mode: int) -> None:
    """Write-then-rename with the final mode from the start (no window where a key
    is readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(
    directory: pathlib.Path, common_name: str = "MatrixInfer local CA"
) -> Authority:
    """A new self-signed CA (``ca.crt``, ``ca.key``) in ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    authority = Authority(directory / "ca.crt", directory / "ca.key")
    _write(authority.key_path, _key_pem(key), 0o600)
    _write(authority.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o600)
    return authority


def subject_alt_name(
    names: Iterable[str], *, ip_addresses: bool = False
) -> x509.SubjectAlternativeName:
    """The subjectAltName of ``names``: DNS names, and with ``ip_addresses`` the
    names that parse as IP addresses as IP addresses (what a client dialing
    ``127.0.0.1`` checks)."""

    def general_name(name: str) -> x509.GeneralName:
        if ip_addresses:
            try:
                return x509.IPAddress(ipaddress.ip_address(name))
            except ValueError:
                pass
        return x509.DNSName(name)

    return x509.SubjectAlternativeName([general_name(n) for n in names])


#: What a certificate may be used for: ``both`` (the services' mTLS), ``server``
#: or ``client`` only.
Usage = Literal["both", "server", "client"]
_USAGES: dict[str, list[x509.ObjectIdentifier]] = {
    "both": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "server": [ExtendedKeyUsageOID.SERVER_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
}


def issue(
    authority: Authority,
    name: str,
    directory: pathlib.Path,
    *,
    sans: Iterable[str] | None = None,
    ip_addresses: bool = False,
    common_name: str | None = None,
    usage: Usage = "both",
    days: float = CERT_DAYS,
    not_before: datetime.datetime | None = None,
) -> CertFiles:
    """A certificate and key for ``name`` (``<name>.crt``, ``<name>.key``), signed
    by ``authority``, usable as both server and client certificate unless
    ``usage`` says otherwise. ``sans`` defaults to the identity name (empty: no
    subjectAltName); with ``ip_addresses`` those that parse as IP addresses are
    IP address SANs. The subject's CN is ``common_name``, else the first SAN,
    else ``name``. ``not_before`` and ``days`` let tests make an expired one."""
    ca_cert, ca_key = authority.load()
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - datetime.timedelta(minutes=5))
    names = list(sans) if sans is not None else [identity_name(name)]
    cn = common_name or (names[0] if names else name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(_USAGES[usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(
            subject_alt_name(names, ip_addresses=ip_addresses), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    files = CertFiles(
        directory / f"{name}.crt", directory / f"{name}.key", authority.cert_path
    )
    # Key first: a reader that sees the new certificate finds its key in place.
    _write(files.key, _key_pem(key), 0o600)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def needs_renewal(
    files: CertFiles,
    authority: Authority,
    renew_before: datetime.timedelta = RENEW_BEFORE,
) -> bool:
    """True when the certificate is missing, unreadable, near (or past) expiry, or
    not signed by the authority's current certificate."""
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        ca_cert = x509.load_pem_x509_certificate(authority.cert_path.read_bytes())
        if not files.key.exists():
            return True
        cert.verify_directly_issued_by(ca_cert)
    except (OSError, ValueError, TypeError):
        return True
    except Exception:  # cryptography's InvalidSignature
        return True
    return cert.not_valid_after_utc - _now() < renew_before


def ensure_pki(
    directory: pathlib.Path,
    names: Iterable[str] = (*SERVICES, ADMIN, REPLICA),
    renew_before: datetime.timedelta = RENEW_BEFORE,
) -> dict[str, CertFiles]:
    """The CA and one certificate per name in ``directory`` (mode 0700): made on
    the first call, reused afterwards, reissued near expiry. The replicas' one
    (:data:`REPLICA`) is a server certificate only. A CA that is missing
    or itself near expiry is made anew (and every certificate with it)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    authority = Authority(directory / "ca.crt", directory / "ca.key")
    try:
        ca_cert, _ = authority.load()
        ca_ok = ca_cert.not_valid_after_utc - _now() >= renew_before
    except (OSError, ValueError):
        ca_ok = False
    if not ca_ok:
        authority = create_ca(directory)
    out: dict[str, CertFiles] = {}
    for name in names:
        files = CertFiles(
            directory / f"{name}.crt", directory / f"{name}.key", authority.cert_path
        )
        if needs_renewal(files, authority, renew_before):
            usage: Usage = "server" if name == REPLICA else "both"
            files = issue(authority, name, directory, usage=usage)
        out[name] = files
    return out
