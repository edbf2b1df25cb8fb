"""Composition root of the registry: settings → store → watch hub → service → server.

``RegistryApp.start`` is what ``main()`` runs and what tests and benchmarks use to get
a real registry on an ephemeral port in-process.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client import CollectorRegistry

from matrixinfer.api.v1 import registry_pb2
from matrixinfer.api.v1 import registry_pb2_grpc as rpb_grpc
from matrixinfer.core.grpc.auth import CallerAuth, Credentials
from matrixinfer.core.grpc.server import RunningServer, run_service, start_server
from matrixinfer.core.jwks import JwksFetcher
from matrixinfer.core.jwts import JwtVerifier
from matrixinfer.core.metrics import (
    GrpcServerMetrics,
    MetricsServer,
    start_metrics_server,
)
from matrixinfer.core.tracing import setup_tracing
from matrixinfer.registry.adapters.db.store import SqlStore, redacted_url
from matrixinfer.registry.domain.service import RegistryService
from matrixinfer.registry.domain.watch import WatchHub
from matrixinfer.registry.grpc.auth import Authorizer, api_key_verifier
from matrixinfer.registry.grpc.servicer import RegistryServicer
from matrixinfer.registry.kube.auth import FrontProxy, KubeAuth
from matrixinfer.registry.kube.server import KubeServer, start_kube_server
from matrixinfer.registry.settings import RegistrySettings

log = logging.getLogger(__name__)
SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name


@dataclass
class RegistryApp:
    settings: RegistrySettings
    store: SqlStore
    hub: WatchHub
    service: RegistryService
    server: RunningServer
    metrics_server: MetricsServer | None
    kube_server: KubeServer | None = None
    jwks: JwksFetcher | None = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.server.port}"

    @property
    def kube_port(self) -> int:
        assert self.kube_server is not None
        return self.kube_server.port

    @property
    def kube_url(self) -> str:
        """Where kubectl's --server points."""
        assert self.kube_server is not None
        scheme = "https" if self.kube_server.tls else "http"
        return f"{scheme}://{self.settings.host}:{self.kube_server.port}"

    @classmethod
    async def start(cls, settings: RegistrySettings) -> RegistryApp:
        store = await SqlStore.open(
            settings.database_url, pool_size=settings.db_pool_size
        )
        hub = WatchHub(
            store,
            poll_interval_s=settings.watch_poll_interval_s,
            compact_every_s=settings.compact_interval_s,
            keep_events=settings.event_keep_count,
            event_retention_s=settings.event_retention_s,
        )
        metrics_server: MetricsServer | None = None
        kube_server: KubeServer | None = None
        server: RunningServer | None = None
        jwks: JwksFetcher | None = None
        try:
            jwts, jwks = _jwt_verifier(settings)
            front_proxy = _front_proxy(settings)
            if jwks is not None:
                await jwks.start()
            await hub.start()
            service = RegistryService(store, hub, settings.bookmark_interval_s)
            metrics_registry = CollectorRegistry()
            tracer = setup_tracing(settings.service_name, settings.otlp_endpoint)
            enforce = settings.auth_enforced()
            servicer = RegistryServicer(service, Authorizer(enforce))
            # Identities (for the audit log and the scope checks) whenever a
            # caller can have one: with mTLS or with auth on; the same on the
            # Kubernetes API port.
            identified = enforce or settings.tls_files() is not None
            credentials = Credentials(
                api_key_verifier(service), jwts, service="registry"
            )
            auth = (
                [CallerAuth("registry", enforce=enforce, credentials=credentials)]
                if identified
                else []
            )
            if not enforce:
                log.warning(
                    "registry authorization is OFF: anyone who reaches %s:%s may "
                    "change everything (MATRIXINFER_REGISTRY_AUTH_MODE)",
                    settings.host,
                    settings.grpc_port,
                )
            server = await start_server(
                settings,
                lambda s: rpb_grpc.add_RegistryServicer_to_server(servicer, s),
                service_names=[SERVICE_NAME],
                interceptors=auth,
                metrics=GrpcServerMetrics(metrics_registry),
                tracer_provider=tracer if settings.otlp_endpoint else None,
            )
            kube_server = await start_kube_server(
                service,
                settings.host,
                settings.kube_port,
                _kube_tls(settings),
                settings.grace_period_s,
                KubeAuth(enforce, credentials, front_proxy)
                if identified or front_proxy is not None
                else None,
            )
            if settings.metrics_port is not None:
                metrics_server = start_metrics_server(
                    settings.metrics_port, metrics_registry, settings.host
                )
        except BaseException:
            if jwks is not None:
                await jwks.stop()
            await hub.stop()
            if kube_server is not None:
                await kube_server.stop()
            if server is not None:
                await server.stop(0)
            await store.close()
            raise
        return cls(
            settings, store, hub, service, server, metrics_server, kube_server, jwks
        )

    async def stop(self, grace_s: float | None = None) -> None:
        # Watches are endless streams: end them first so the grace period is spent
        # on unary calls that can actually finish.
        await self.hub.stop()
        if self.kube_server is not None:
            await self.kube_server.stop()
        grace = self.settings.grace_period_s if grace_s is None else grace_s
        await self.server.stop(grace)
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.jwks is not None:
            await self.jwks.stop()
        # Writes whose callers were cancelled by the stop still commit or roll
        # back whole before the database connections close.
        await self.service.drain(timeout_s=max(grace, 5.0))
        await self.store.close()


def _jwt_verifier(
    settings: RegistrySettings,
) -> tuple[JwtVerifier | None, JwksFetcher | None]:
    """JWTs are taken only with jwt_issuer, jwt_audience and a JWKS (file or URL);
    with the URL the keys are fetched at start, then refreshed (early when a token
    names an unknown key id)."""
    jwt = settings.jwt_settings()
    if jwt is None:
        return None, None
    verifier = JwtVerifier(jwt)
    if not settings.jwks_url:
        return verifier, None
    fetcher = JwksFetcher(
        settings.jwks_url, verifier, refresh_s=settings.jwks_refresh_s
    )
    verifier.on_unknown_kid = fetcher.poke
    return verifier, fetcher


def _kube_tls(settings: RegistrySettings) -> ssl.SSLContext | None:
    """HTTPS for the Kubernetes API port: on kube_tls_cert_file and
    kube_tls_key_file when set, else on the registry's own certificate when it
    has its TLS files. With those, client certificates signed by the registry's
    CA are verified (optional: an API key is the other way in) and name the
    caller."""
    cert, key = settings.kube_tls_cert_file, settings.kube_tls_key_file
    if (cert is None) != (key is None):
        raise ValueError(
            "set both kube_tls_cert_file and kube_tls_key_file, or neither"
        )
    files = settings.tls_files()
    if cert is None or key is None:
        if files is None:
            return None
        cert, key = files.cert, files.key
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    cas = [files.ca] if files is not None else []
    if settings.kube_requestheader_ca_file is not None:
        cas.append(settings.kube_requestheader_ca_file)
    for ca in cas:
        context.load_verify_locations(cafile=str(ca))
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _front_proxy(settings: RegistrySettings) -> FrontProxy | None:
    """The API server's front proxy as a caller of the Kubernetes port, when its
    CA is configured (API aggregation with authorization: docs/kubernetes-api.md)."""
    path = settings.kube_requestheader_ca_file
    if path is None:
        return None
    if settings.kube_tls_cert_file is None and settings.tls_files() is None:
        raise ValueError(
            "kube_requestheader_ca_file needs HTTPS on the Kubernetes port: set "
            "kube_tls_cert_file and kube_tls_key_file, or the registry's tls_* files"
        )
    ca = x509.load_pem_x509_certificate(path.read_bytes())
    files = settings.tls_files()
    if files is not None:
        own = x509.load_pem_x509_certificate(files.ca.read_bytes())
        if own.fingerprint(hashes.SHA256()) == ca.fingerprint(hashes.SHA256()):
            raise ValueError(
                "kube_requestheader_ca_file is the registry's own CA: a service "
                "certificate would pass as the API server's front proxy"
            )
    return FrontProxy(
        ca,
        frozenset(settings.kube_requestheader_allowed_names),
        {k: frozenset(v) for k, v in settings.kube_requestheader_scopes.items()},
    )


def main() -> None:
    settings = RegistrySettings()
    run_service(
        settings,
        lambda: RegistryApp.start(settings),
        lambda app: (
            f"registry ready on {app.address}, Kubernetes API on {app.kube_url} "
            f"(database {redacted_url(settings.database_url)})"
        ),
    )


if __name__ == "__main__":
    main()
