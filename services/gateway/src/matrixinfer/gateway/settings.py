"""Gateway settings (environment prefix MATRIXINFER_GATEWAY_)."""

from __future__ import annotations

import pathlib
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from matrixinfer.core.pki import CertFiles
from matrixinfer.core.settings import JwtServiceSettings


class GatewaySettings(JwtServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MATRIXINFER_GATEWAY_", use_attribute_docstrings=True, extra="ignore"
    )

    service_name: str = "gateway"
    """Name in logs, traces and health."""

    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """KServe v2 gRPC port; 8001 is Triton's, so clients change only the host."""

    http_port: int = Field(default=8000, ge=0, le=65535)
    """KServe v2 HTTP/JSON port (Triton's 8000); also /metrics, /healthz, /readyz."""

    haproxy_binary: str = "haproxy"
    """The HAProxy (>= 2.6) executable that carries requests (the data plane); the
    gateway renders its configuration and supervises it."""

    dataplane_mode: Literal["supervised", "external"] = "supervised"
    """supervised: the gateway starts HAProxy itself and restarts it with backoff
    (one machine, `make run`). external: HAProxy runs beside it (its own container
    in the same pod or compose network namespace) on the shared `dataplane_dir`; the
    gateway writes the configuration there and drives HAProxy through its master
    and runtime sockets."""

    dataplane_dir: pathlib.Path | None = None
    """Folder for HAProxy's configuration, maps and sockets (mode 0700); unset: a
    new temporary folder, removed at exit."""

    dataplane_threads: int = Field(default=0, ge=0, le=64)
    """HAProxy worker threads; 0: HAProxy's default (one per CPU)."""

    dataplane_stats_port: int = Field(default=0, ge=0, le=65535)
    """Port of HAProxy's built-in Prometheus exporter (/metrics, per backend and per
    replica); 0: not served. The gateway's own /metrics carries per-model series
    read from the same counters."""

    peers: list[str] = Field(default_factory=list)
    """Rate-limit tables shared by several gateways through HAProxy's `peers`:
    every gateway as `name=host:port`, this one included (its name is
    `peer_name`). Empty: each gateway limits on its own."""

    peer_name: str = ""
    """This gateway's name in `peers`."""

    edge_tls_cert_file: pathlib.Path | None = None
    """PEM certificate (chain) HAProxy serves on the public gRPC and REST ports:
    TLS 1.2 minimum, modern ciphers, ALPN h2 (gRPC) and h2,http/1.1 (REST). Set with
    `edge_tls_key_file`; unset: plaintext. A changed file is loaded within
    `edge_tls_reload_s` without dropping connections (HAProxy's runtime API)."""

    edge_tls_key_file: pathlib.Path | None = None
    """The private key of `edge_tls_cert_file` (PEM)."""

    edge_tls_client_ca_file: pathlib.Path | None = None
    """CA certificates (PEM) that sign client certificates: with TLS on, callers may
    present one (optional; an untrusted one fails the handshake) and are mapped to
    scopes by `edge_tls_client_scopes`."""

    edge_tls_client_scopes: dict[str, list[str]] = Field(default_factory=dict)
    """Client certificate subject CN → scopes, as an API key's (`infer:<model>`,
    `infer:*`, `admin`) plus an optional `tenant:<name>` (JSON object). A trusted
    certificate whose CN is not here authenticates nobody."""

    edge_tls_reload_s: float = Field(default=2.0, gt=0)
    """How often the certificate and key files are checked for a change."""

    replica_tls: Literal["auto", "on", "off"] = "auto"
    """gRPC to the Triton replicas (HAProxy's and the slow path's): `on`: mutual
    TLS with this gateway's certificate (the tls_* files, needed then), requiring
    the replicas' identity `replica.matrixinfer.internal` in theirs (the
    controller's replica_tls_* settings); `off`: plaintext; `auto` (default): on
    when the tls_* files are set. REST to Triton's HTTP port and the health checks
    stay plaintext (Triton's HTTP port has no TLS)."""

    slow_path_host: str = "127.0.0.1"
    """Where the gateway's own Python serves what HAProxy hands it (models scaling
    up from zero, mirrored rules, JWTs, the admin API, /healthz, /readyz, /metrics);
    only HAProxy calls it."""

    slow_grpc_port: int = Field(default=0, ge=0, le=65535)
    """The slow path's gRPC port; 0: picked at start."""

    slow_http_port: int = Field(default=0, ge=0, le=65535)
    """The slow path's HTTP port (also the gateway process's own /healthz for
    probes that must not depend on HAProxy); 0: picked at start."""

    registry_address: str = "127.0.0.1:50051"
    """host:port of the registry (routing comes from its Watch)."""

    max_message_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest request or response, in bytes; tensors are big, so more than gRPC's
    4 MiB default, but bounded."""

    default_timeout_s: float = Field(default=30.0, gt=0)
    """Deadline for a call that brings none."""

    max_timeout_s: float = Field(default=300.0, gt=0)
    """A client's deadline is capped at this."""

    auth_mode: Literal["required", "off"] = "required"
    """required: every inference call needs an API key (x-api-key or Bearer) or a JWT.
    off: anyone may call every model; only for local development (`make run`)."""

    autoscaler_address: str | None = None
    """host:port of the autoscaler: load reports go there every second and models at
    zero are activated through it. Unset: no reports; held requests wait for whoever
    scales the model up."""

    max_held_per_model: int = Field(default=1000, ge=0)
    """Requests held per model while it scales up from zero; more get
    RESOURCE_EXHAUSTED (a bounded queue, never unbounded memory)."""

    admin_api: bool = True
    """Serve the registry's admin API over REST (/apis/v1/..., transcoded from its
    google.api.http annotations; needs the `admin` scope unless auth_mode is off)."""

    admin_timeout_s: float = Field(default=10.0, gt=0)
    """Deadline of each admin call the gateway makes to the registry."""

    admin_max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    """Largest admin request body (manifests are small; the registry takes 4 MiB)."""

    admin_watch_max_s: float = Field(default=1800.0, gt=0)
    """How long a REST watch streams at most (and by default); then it ends and the
    client watches again from the last resourceVersion, as in Kubernetes."""

    @model_validator(mode="after")
    def _edge_tls_complete(self) -> GatewaySettings:
        if (self.edge_tls_cert_file is None) != (self.edge_tls_key_file is None):
            raise ValueError(
                "edge_tls_cert_file and edge_tls_key_file go together (set both)"
            )
        if self.edge_tls_client_ca_file is not None and self.edge_tls_cert_file is None:
            raise ValueError("edge_tls_client_ca_file needs edge_tls_cert_file")
        if self.edge_tls_client_scopes and self.edge_tls_client_ca_file is None:
            raise ValueError("edge_tls_client_scopes needs edge_tls_client_ca_file")
        if self.replica_tls == "on" and self.tls_files() is None:
            raise ValueError(
                "replica_tls on needs tls_cert_file, tls_key_file and tls_ca_file"
            )
        return self

    def replica_tls_files(self) -> CertFiles | None:
        """The files of mTLS to the replicas (this gateway's own), or None."""
        return None if self.replica_tls == "off" else self.tls_files()
