"""Registry settings (environment prefix MATRIXINFER_REGISTRY_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from matrixinfer.core.scopes import GRANTABLE_SCOPE
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

    kube_requestheader_ca_file: Path | None = None
    """PEM CA of the cluster API server's front-proxy client certificate (API
    aggregation: `requestheader-client-ca-file` of the ConfigMap
    kube-system/extension-apiserver-authentication). A request on the Kubernetes
    port whose client certificate this CA signed is the API server forwarding for
    the user in X-Remote-User (groups in X-Remote-Group), who gets the scopes of
    kube_requestheader_scopes. Must not be the registry's own CA. Needs HTTPS."""

    kube_requestheader_allowed_names: list[str] = ["front-proxy-client"]
    """Common names the front-proxy certificate may have (the ConfigMap's
    `requestheader-allowed-names`); empty: any certificate that CA signed."""

    kube_requestheader_scopes: dict[str, list[str]] = {
        "group:system:masters": ["admin"]
    }
    """Scopes of the users the API server forwards, by `user:<name>` and
    `group:<name>` (JSON in the environment): a user gets the union of their own
    and their groups' entries; nobody listed gets none (401 is not used: they are
    authenticated, and every request they make is 403). The cluster's RBAC is not
    consulted."""

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

    @field_validator("kube_requestheader_scopes")
    @classmethod
    def _known_subjects_and_scopes(
        cls, value: dict[str, list[str]]
    ) -> dict[str, list[str]]:
        for subject, scopes in value.items():
            kind, _, name = subject.partition(":")
            if kind not in ("user", "group") or not name:
                raise ValueError(f"{subject!r}: a key is user:<name> or group:<name>")
            for scope in scopes:
                if not GRANTABLE_SCOPE.fullmatch(scope):
                    raise ValueError(f"{subject}: {scope!r} is not a scope")
        return value
