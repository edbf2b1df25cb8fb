"""Registry settings (environment prefix MATRIXINFER_REGISTRY_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from matrixinfer.core.settings import JwtServiceSettings


class RegistrySettings(JwtServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MATRIXINFER_REGISTRY_",
        use_attribute_docstrings=True,
        extra="ignore",
    )

    service_name: str = "registry"
    """Name in logs, traces and health."""

    grpc_port: int = Field(default=50051, ge=0, le=65535)
    """TCP port of the registry's gRPC API; 50051 is the customary gRPC port."""

    database_url: str = "sqlite+aiosqlite:///.matrixinfer/registry.db"
    """SQLAlchemy URL. The embedded default is SQLite in ./.matrixinfer; production uses
    PostgreSQL: postgresql+psycopg://user:password@host:5432/matrixinfer."""

    db_pool_size: int = Field(default=10, ge=1)
    """PostgreSQL connections per process (the same again may overflow briefly)."""

    bookmark_interval_s: float = Field(default=30.0, gt=0)
    """A watcher that asked for bookmarks gets one after this many idle seconds, so it
    can resume from a recent resourceVersion after a disconnect."""

    watch_poll_interval_s: float = Field(default=1.0, gt=0)
    """Safety-net poll of the events table, in case a NOTIFY is lost; normal delivery
    is immediate."""

    event_retention_s: float = Field(default=3600.0, gt=0)
    """Events older than this (and beyond event_keep_count) are compacted away; a watch
    from an older resourceVersion gets OUT_OF_RANGE and must relist."""

    event_keep_count: int = Field(default=100_000, ge=0)
    """Newest events always kept, whatever their age."""

    compact_interval_s: float = Field(default=60.0, gt=0)
    """How often this process compacts the event history."""

    kube_port: int = Field(default=50053, ge=0, le=65535)
    """TCP port of the registry's Kubernetes API (HTTP: kubectl, client-go, the
    kubernetes Python client; see docs/kubernetes-api.md). 50053 sits next to the
    gRPC port (6443 and 8443 are what local Kubernetes distributions take); 0 asks
    the OS for a free port."""

    kube_tls_cert_file: Path | None = None
    """PEM certificate (chain) for the Kubernetes API port; with kube_tls_key_file it
    serves HTTPS, as Kubernetes API aggregation requires. Unset: plain HTTP."""

    kube_tls_key_file: Path | None = None
    """PEM private key of kube_tls_cert_file."""

    auth_mode: Literal["auto", "on", "off"] = "auto"
    """Authorization of the gRPC API and the Kubernetes port (docs/security.md): on:
    every call needs a service certificate, an API key (Bearer or x-api-key) or a
    JWT (Bearer; with jwt_issuer, jwt_audience and a JWKS set) with the scope the
    method needs (anonymous: UNAUTHENTICATED, a missing scope: PERMISSION_DENIED).
    off: anyone who reaches the port may do anything. auto (default): on when the
    tls_* files are set (as `matrixinfer up` does), off on plaintext."""

    def auth_enforced(self) -> bool:
        """Whether the gRPC API requires identities and scopes."""
        if self.auth_mode == "auto":
            return self.tls_files() is not None
        return self.auth_mode == "on"
