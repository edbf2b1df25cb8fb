"""Settings every MatrixInfer service shares.

Each service subclasses :class:`ServiceSettings` with its own env prefix, so one
environment can configure several services without clashes::

    class RegistrySettings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="MATRIXINFER_REGISTRY_")
        service_name: str = "registry"

Settings are loaded once in the service's ``main()`` and passed down explicitly; there
is deliberately no module-level instance.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from matrixinfer.core.jwts import JwtSettings
from matrixinfer.core.pki import CertFiles

_MIB = 1024 * 1024
_KIB = 1024


class ServiceSettings(BaseSettings):
    """Network, observability and gRPC limits common to every service."""

    model_config = SettingsConfigDict(
        env_prefix="MATRIXINFER_",
        # Attribute docstrings become field descriptions, so `--help`-style output and
        # generated docs say the unit and the reason for each default.
        use_attribute_docstrings=True,
        # The environment of a container carries many unrelated variables; an unknown
        # one with our prefix must not stop a service from starting.
        extra="ignore",
        validate_default=True,
    )

    service_name: str = "matrixinfer"
    """Name reported in logs, traces (service.name) and health; subclasses override."""

    host: str = "127.0.0.1"
    """Address the gRPC server binds. Loopback by default so nothing is exposed by
    accident; containers set 0.0.0.0."""

    grpc_port: int = Field(default=0, ge=0, le=65535)
    """TCP port of the gRPC server. 0 asks the OS for a free port (tests, `up`), which
    is then published through ``port_file``."""

    port_file: Path | None = None
    """When set, the port actually bound is written here (atomically) after start, so
    tests and supervisors can use ``grpc_port=0`` and still find the server."""

    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """TCP port of the Prometheus /metrics HTTP server; None runs none (tests, CLI)."""

    log_level: str = "INFO"
    """Root log level name (DEBUG, INFO, WARNING, ERROR, CRITICAL)."""

    log_json: bool = True
    """One JSON object per line, for log collectors; False gives human-readable text."""

    otlp_endpoint: str | None = None
    """OTLP/gRPC collector address (e.g. http://jaeger:4317). None exports no spans;
    trace context is still propagated so ids show up in logs."""

    max_message_bytes: int = Field(default=4 * _MIB, gt=0)
    """Largest gRPC message sent or received, in bytes. 4 MiB is gRPC's own default
    receive limit; services that carry tensors raise it explicitly."""

    max_metadata_bytes: int = Field(default=16 * _KIB, gt=0)
    """Largest header block (metadata) accepted, in bytes. 16 KiB leaves room for a JWT
    and trace headers while bounding what a hostile client can make us buffer."""

    max_concurrent_streams: int = Field(default=100, gt=0)
    """HTTP/2 streams (concurrent RPCs) per client connection; 100 is the HTTP/2
    recommended minimum and bounds per-connection memory."""

    grace_period_s: float = Field(default=10.0, ge=0)
    """Seconds in-flight RPCs get to finish on SIGTERM before they are cancelled; well
    under Kubernetes' default 30 s terminationGracePeriodSeconds."""

    health_port: int | None = Field(default=None, ge=0, le=65535)
    """A second, plaintext port that serves grpc.health.v1 only (nothing else is
    registered on it): for the kubelet's gRPC probes, which cannot present a client
    certificate to an mTLS port. None: no such port (health stays on grpc_port)."""

    tls_cert_file: Path | None = None
    """PEM certificate of this service (its subjectAltName is its identity,
    ``<service>.matrixinfer.internal``). With tls_key_file and tls_ca_file set, the
    gRPC server speaks only mTLS and this service's own gRPC clients present it;
    all three unset: plaintext. The files are re-read when they change."""

    tls_key_file: Path | None = None
    """PEM private key of tls_cert_file."""

    tls_ca_file: Path | None = None
    """PEM CA certificate(s) that peers' certificates must be signed by (clients
    connecting to this service, and the services this one calls)."""

    @model_validator(mode="after")
    def _tls_all_or_none(self) -> ServiceSettings:
        self.tls_files()
        return self

    def tls_files(self) -> CertFiles | None:
        """This service's certificate, key and CA, or None (plaintext)."""
        return self.cert_files("tls")

    def cert_files(self, prefix: str) -> CertFiles | None:
        """The ``<prefix>_cert_file``, ``_key_file`` and ``_ca_file`` settings
        together, or None when none is set; ValueError naming them when only some
        are."""
        names = [f"{prefix}_{part}_file" for part in ("cert", "key", "ca")]
        cert, key, ca = (getattr(self, name) for name in names)
        if cert is None and key is None and ca is None:
            return None
        if cert is None or key is None or ca is None:
            raise ValueError(
                f"set all of {', '.join(names[:2])} and {names[2]}, or none"
            )
        return CertFiles(cert, key, ca)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r}")
        return level


class JwtServiceSettings(ServiceSettings):
    """The settings of a service that takes JWTs (the gateway, the registry): the
    identity provider's issuer, audience and keys."""

    jwt_issuer: str | None = None
    """Expected `iss` of JWTs; JWTs are accepted only when issuer, audience and JWKS
    are all set."""

    jwt_audience: str | None = None
    """Expected `aud` of JWTs."""

    jwks_path: Path | None = None
    """A JWKS document (JSON) with the public keys JWTs are verified against."""

    jwks_url: str | None = None
    """The identity provider's JWKS URL (https; http only to loopback), fetched at
    start, every `jwks_refresh_s` and early when a token names an unknown key id.
    Takes precedence over `jwks_path`."""

    jwks_refresh_s: float = Field(default=300.0, gt=0)
    """Seconds between JWKS refreshes from `jwks_url`."""

    def jwt_settings(self) -> JwtSettings | None:
        """How JWTs are verified, or None (JWTs refused) unless issuer, audience and
        a JWKS source are all set. With `jwks_url` the keys start empty (the fetcher
        brings them); else they are read from `jwks_path` now."""
        if not (self.jwt_issuer and self.jwt_audience):
            return None
        if self.jwks_url:
            jwks: dict[str, Any] = {"keys": []}
        elif self.jwks_path is not None:
            jwks = json.loads(self.jwks_path.read_text())
        else:
            return None
        return JwtSettings(
            issuer=self.jwt_issuer, audience=self.jwt_audience, jwks=jwks
        )
