"""The CLI's connections (registry and controller over gRPC, the gateway over HTTP)
and the one place their failures become messages and exit codes.

Exit codes: 0 done; 1 the server refused or failed (or a wait timed out); 2 bad
usage; 3 a server could not be reached.

gRPC, protobuf and the generated stubs are imported where a call is made, not here:
every command (and ``--help``) imports this module.
"""

from __future__ import annotations

import datetime
import json
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import click

from matrixinfer.cli.config import Config

if TYPE_CHECKING:
    import grpc

    from matrixinfer.api.v1 import controller_pb2_grpc, registry_pb2_grpc
    from matrixinfer.api.v1 import registry_pb2 as rpb
    from matrixinfer.api.v1 import resources_pb2 as pb

T = TypeVar("T")
EXIT_OK, EXIT_SERVER, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
#: Names of the gRPC status codes that mean the server did not answer.
UNREACHABLE_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED")

#: How to start each server, for "cannot reach" messages.
START_HINTS = {
    "registry": "Start it with `make run`, or point --server at it.",
    "controller": "Start it with `matrixinfer-controller`, or point --controller "
    "at it.",
    "gateway": "Start it with `matrixinfer-gateway`, or point --gateway (REST) or "
    "--gateway-grpc at it.",
}


class CliError(click.ClickException):
    """A failure to report on stderr, exactly as given; exit code 1."""

    exit_code = EXIT_SERVER

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


class UsageFailure(CliError):
    """Bad usage found after parsing (a broken config file): exit code 2."""

    exit_code = EXIT_USAGE


class Unreachable(CliError):
    """A server did not answer: exit code 3."""

    exit_code = EXIT_UNREACHABLE


#: (CA, certificate, key) PEM files for mTLS, as Config.tls gives them.
Tls = tuple[pathlib.Path, pathlib.Path, pathlib.Path]


def unreachable(
    service: str, address: str, why: str, tls: Tls | None = None
) -> CliError:
    lowered = why.lower()
    if tls is not None and (
        "handshake" in lowered
        or "verification" in lowered
        or "certificate" in lowered
        or "socket closed" in lowered
    ):
        ca, cert, _ = tls
        if "hostname verification" in lowered:
            reason = f"its certificate does not name {service}.matrixinfer.internal"
        elif "certificate_verify_failed" in lowered:
            reason = f"its certificate is not signed by the CA in {ca}, or expired"
        else:
            reason = (
                f"the {service} refused our certificate {cert} (not signed by its "
                "CA, or expired), or it does not speak TLS"
            )
        return Unreachable(
            f"error: TLS handshake with the {service} at {address} failed: "
            f"{reason} ({why})"
        )
    hint = ""
    if tls is None and "socket closed" in lowered:
        hint = (
            " If it requires mTLS, set tls_ca, tls_cert and tls_key in the config "
            "(or MATRIXINFER_TLS_CA, MATRIXINFER_TLS_CERT, MATRIXINFER_TLS_KEY)."
        )
    return Unreachable(
        f"error: cannot reach the {service} at {address} ({why}); is it running? "
        + START_HINTS[service]
        + hint
    )


def grpc_channel(address: str, service: str, tls: Tls | None) -> grpc.Channel:
    """A blocking channel to ``service``: plaintext, or mTLS presenting ``tls``'s
    certificate and accepting only a server whose certificate names the service
    (``<service>.matrixinfer.internal``) and is signed by ``tls``'s CA."""
    import grpc

    if tls is None:
        return grpc.insecure_channel(address)
    ca, cert, key = tls
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes(),
            private_key=key.read_bytes(),
            certificate_chain=cert.read_bytes(),
        )
    except OSError as e:
        raise UsageFailure(f"error: cannot read {e.filename}: {e.strerror}") from None
    return grpc.secure_channel(
        address,
        credentials,
        options=[("grpc.ssl_target_name_override", f"{service}.matrixinfer.internal")],
    )


def rpc_error(
    e: grpc.RpcError,
    service: str,
    address: str,
    where: str = "",
    tls: Tls | None = None,
) -> CliError:
    import grpc

    from matrixinfer.core.grpc.errors import error_details

    details = error_details(e)
    if details.code.name in UNREACHABLE_CODES:
        return unreachable(service, address, details.message, tls)
    head = f"error ({details.code.name}): " + (f"{where}: " if where else "")
    if details.field_violations:
        lines = [f"{head}fix these fields:"]
        lines += [f"  {f}: {d}" for f, d in details.field_violations]
        return CliError("\n".join(lines))
    hint = ""
    if details.code in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    ):
        hint = (
            " (pass a key with --token, $MATRIXINFER_TOKEN or `token:` in the config)"
        )
    return CliError(f"{head}{details.message}{hint}")


def as_dict(resource: pb.Resource) -> dict[str, Any]:
    from google.protobuf import json_format

    from matrixinfer.api.envelope import unwrap

    obj = unwrap(resource)
    return {} if obj is None else json_format.MessageToDict(obj)


def auth_metadata(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


class RegistryApi(Protocol):
    """What commands need from the registry (tests substitute an in-memory one)."""

    def get(self, kind: str, namespace: str, name: str) -> pb.Resource: ...

    def list_objects(
        self, kind: str, namespace: str, selector: str = ""
    ) -> tuple[list[pb.Resource], str]: ...

    def list_revisions(self, namespace: str, name: str) -> list[rpb.ModelRevision]: ...


@dataclass
class Registry:
    """The registry over gRPC; every failure becomes a :class:`CliError`."""

    address: str
    token: str
    timeout_s: float
    tls: Tls | None = None
    channel: grpc.Channel = field(init=False)
    stub: registry_pb2_grpc.RegistryStub = field(init=False)

    def __post_init__(self) -> None:
        from matrixinfer.api.v1 import registry_pb2_grpc

        self.channel = grpc_channel(self.address, "registry", self.tls)
        self.stub = registry_pb2_grpc.RegistryStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request: Any, where: str = "") -> Any:
        import grpc

        try:
            return getattr(self.stub, method)(
                request, timeout=self.timeout_s, metadata=auth_metadata(self.token)
            )
        except grpc.RpcError as e:
            raise rpc_error(e, "registry", self.address, where, self.tls) from None

    def apply(self, manifest: str, dry_run: bool, where: str) -> rpb.ApplyResponse:
        from matrixinfer.api.v1 import registry_pb2 as rpb

        response: rpb.ApplyResponse = self.call(
            "Apply", rpb.ApplyRequest(manifest=manifest, dry_run=dry_run), where
        )
        return response

    def get(self, kind: str, namespace: str, name: str) -> pb.Resource:
        from matrixinfer.api.v1 import registry_pb2 as rpb

        resource: pb.Resource = self.call(
            "Get", rpb.GetRequest(kind=kind, namespace=namespace, name=name)
        )
        return resource

    def list_objects(
        self, kind: str, namespace: str, selector: str = ""
    ) -> tuple[list[pb.Resource], str]:
        from matrixinfer.api.v1 import registry_pb2 as rpb

        items: list[pb.Resource] = []
        token, version = "", ""
        while True:
            request = rpb.ListRequest(
                kind=kind, namespace=namespace, label_selector=selector
            )
            setattr(request, "continue", token)  # noqa: B010 - `continue` is a keyword
            page: rpb.ListResponse = self.call("List", request)
            items.extend(page.items)
            version = version or page.resource_version
            token = getattr(page, "continue")
            if not token:
                return items, version

    def list_revisions(self, namespace: str, name: str) -> list[rpb.ModelRevision]:
        from matrixinfer.api.v1 import registry_pb2 as rpb

        response: rpb.ListRevisionsResponse = self.call(
            "ListRevisions", rpb.ListRevisionsRequest(namespace=namespace, name=name)
        )
        return list(response.revisions)

    def watch(
        self,
        kind: str,
        namespace: str,
        selector: str,
        resource_version: str,
        initial: bool = False,
        timeout_s: float | None = None,
    ) -> Iterator[rpb.WatchEvent]:
        """Events as they come; raw grpc.RpcError escapes (callers decide what a
        deadline or an expired version means)."""
        from matrixinfer.api.v1 import registry_pb2 as rpb

        request = rpb.WatchRequest(
            kind=kind,
            namespace=namespace,
            label_selector=selector,
            resource_version=resource_version,
            send_initial_events=initial,
            allow_bookmarks=True,
        )
        stream = self.stub.Watch(
            request, timeout=timeout_s, metadata=auth_metadata(self.token)
        )
        try:
            yield from stream
        finally:
            stream.cancel()


@dataclass
class HttpResponse:
    status: int
    body: bytes
    #: Lower-case names.
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Gateway:
    """The gateway's REST side (KServe v2, /metrics) with the stdlib's HTTP client."""

    url: str
    token: str
    timeout_s: float

    def request(
        self,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpResponse:
        """Any HTTP status comes back; an unreachable gateway raises CliError."""
        import http.client
        import urllib.error
        import urllib.request

        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.url + path,
            data=body,
            headers=all_headers,
            method="POST" if body is not None else "GET",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as r:
                headers = {k.lower(): v for k, v in r.headers.items()}
                return HttpResponse(r.status, r.read(), headers)
        except urllib.error.HTTPError as e:
            return HttpResponse(e.code, e.read())
        except http.client.HTTPException as e:
            raise unreachable(
                "gateway",
                self.url,
                f"it does not speak HTTP ({type(e).__name__}); --gateway is the "
                "REST URL (port 8000), --gateway-grpc the gRPC one",
            ) from None
        except (TimeoutError, urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise unreachable("gateway", self.url, str(reason)) from None

    def checked(self, path: str, body: bytes | None = None) -> HttpResponse:
        """Like request, but an error status becomes a CliError with the gateway's
        own message."""
        response = self.request(path, body)
        if response.status >= 400:
            raise http_error(response)
        return response


def health(
    address: str, timeout_s: float, tls: Tls | None = None, service: str = "registry"
) -> str:
    """A gRPC server's health status name (SERVING, NOT_SERVING, ...), or
    ``unreachable (CODE)``; with ``tls``, over mTLS to ``service``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc_channel(address, service, tls) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError as e:
            return f"unreachable ({e.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def http_error(response: HttpResponse) -> CliError:
    try:
        message = str(response.json().get("error", ""))
    except (ValueError, AttributeError):
        message = response.body[:200].decode(errors="replace")
    hint = ""
    if response.status in (401, 403):
        hint = (
            " (pass a key with --token, $MATRIXINFER_TOKEN or `token:` in the config; "
            "`matrixinfer apikey create` makes one)"
        )
    elif response.status == 404:
        hint = " (`matrixinfer get modelroutes -o wide` lists the model names served)"
    return CliError(f"error (HTTP {response.status}): {message}{hint}")


@dataclass
class App:
    """What every command gets (click's ``ctx.obj``)."""

    config: Config
    timeout_s: float = 10.0
    now: Callable[[], datetime.datetime] = field(
        default=lambda: datetime.datetime.now(datetime.UTC)
    )
    registry_api: RegistryApi | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def registry(self) -> Registry:
        if not isinstance(self.registry_api, Registry):
            registry = Registry(
                self.config.server, self.config.token, self.timeout_s, self.config.tls
            )
            self._closers.append(registry.close)
            self.registry_api = registry
        return self.registry_api

    @property
    def reader(self) -> RegistryApi:
        """The registry for reading (get/describe): substitutable in tests."""
        if self.registry_api is None:
            return self.registry
        return self.registry_api

    @property
    def gateway(self) -> Gateway:
        return Gateway(self.config.gateway, self.config.token, self.timeout_s)

    def controller(self) -> controller_pb2_grpc.ControllerStub:
        from matrixinfer.api.v1 import controller_pb2_grpc

        channel = grpc_channel(self.config.controller, "controller", self.config.tls)
        self._closers.append(channel.close)
        return controller_pb2_grpc.ControllerStub(channel)

    def namespace(self, given: str | None) -> str:
        return given or self.config.namespace

    def close(self) -> None:
        for close in reversed(self._closers):
            close()
