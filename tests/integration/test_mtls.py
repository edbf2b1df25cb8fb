"""mTLS between the services, with real servers on ephemeral ports and certificates
made by core's PKI (docs/security.md, "Service-to-service mTLS").

Every refusal is asserted as a user sees it: the status code and what the client's
log (or the CLI) says about it."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import pathlib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from click.testing import CliRunner
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from matrixinfer.api.v1 import autoscaler_pb2 as apb
from matrixinfer.api.v1 import (
    autoscaler_pb2_grpc,
    controller_pb2_grpc,
    registry_pb2_grpc,
)
from matrixinfer.api.v1 import controller_pb2 as cpb
from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.autoscaler.main import AutoscalerApp
from matrixinfer.autoscaler.settings import AutoscalerSettings
from matrixinfer.cli.client import App
from matrixinfer.cli.config import Config
from matrixinfer.cli.main import cli
from matrixinfer.controller.main import ControllerApp
from matrixinfer.controller.settings import ControllerSettings
from matrixinfer.core import pki
from matrixinfer.core.grpc.channel import create_channel
from matrixinfer.core.grpc.tls import ClientTls
from matrixinfer.registry.main import RegistryApp
from tests.conftest import registry_settings
from tests.fakes.controller_runtime import FakeRuntime

pytestmark = pytest.mark.timeout(120)


def tls_settings(files: pki.CertFiles) -> dict[str, object]:
    return {
        "tls_cert_file": files.cert,
        "tls_key_file": files.key,
        "tls_ca_file": files.ca,
    }


@dataclass
class Pki:
    directory: pathlib.Path
    files: dict[str, pki.CertFiles]

    @property
    def authority(self) -> pki.Authority:
        return pki.Authority(self.directory / "ca.crt", self.directory / "ca.key")

    def odd(self, name: str, **kwargs: object) -> pki.CertFiles:
        """Another certificate from our CA (in its own folder)."""
        return pki.issue(self.authority, name, self.directory / name, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def certs(tmp_path: pathlib.Path) -> Pki:
    directory = tmp_path / "pki"
    return Pki(directory, pki.ensure_pki(directory))


@pytest_asyncio.fixture
async def registry(tmp_path: pathlib.Path, certs: Pki) -> AsyncIterator[RegistryApp]:
    app = await RegistryApp.start(
        registry_settings(
            f"sqlite+aiosqlite:///{tmp_path}/registry.db",
            **tls_settings(certs.files["registry"]),
        )
    )
    try:
        yield app
    finally:
        await app.stop(0)


def channel_as(
    files: pki.CertFiles, target: str, peer: str = "registry"
) -> grpc.aio.Channel:
    return create_channel(target, tls=ClientTls(files, peer), retry_attempts=1)


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def list_models(channel: grpc.aio.Channel) -> rpb.ListResponse:
    stub = registry_pb2_grpc.RegistryStub(channel)
    response: rpb.ListResponse = await stub.List(
        rpb.ListRequest(kind="Model"), timeout=5
    )
    return response


async def test_a_service_certificate_is_accepted_and_names_its_caller(
    registry: RegistryApp, certs: Pki
) -> None:
    async with channel_as(certs.files["controller"], registry.address) as channel:
        assert list((await list_models(channel)).items) == []
        stub = registry_pb2_grpc.RegistryStub(channel)
        # Read and status are the controller's; Apply is not.
        manifest = "kind: Model\nmetadata: {name: m, namespace: team-a}\n"
        error = await refused(
            stub.Apply(rpb.ApplyRequest(manifest=manifest), timeout=5)
        )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        "service:controller may not apply Model in namespace team-a: needs scope "
        "admin or admin:ns/team-a"
    )


async def test_no_client_certificate_is_refused(
    registry: RegistryApp, certs: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    ca_only = grpc.ssl_channel_credentials(certs.files["registry"].ca.read_bytes())
    async with create_channel(
        registry.address,
        credentials=ca_only,
        options=[("grpc.ssl_target_name_override", "registry.matrixinfer.internal")],
        retry_attempts=1,
    ) as channel:
        error = await refused(list_models(channel))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_an_expired_client_certificate_is_refused(
    registry: RegistryApp, certs: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    expired = certs.odd("controller", days=1, not_before=started)
    with caplog.at_level(logging.ERROR):
        async with channel_as(expired, registry.address) as channel:
            error = await refused(list_models(channel))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert f"TLS handshake with the registry at {registry.address} failed: " in (
        caplog.text
    )
    assert f"the registry refused our certificate {expired.cert}" in caplog.text


async def test_a_certificate_from_another_ca_is_refused(
    registry: RegistryApp, certs: Pki, tmp_path: pathlib.Path
) -> None:
    other = pki.create_ca(tmp_path / "other")
    foreign = pki.issue(other, "controller", tmp_path / "other")
    # It trusts our CA, so only the server's check of it can fail.
    presented = pki.CertFiles(foreign.cert, foreign.key, certs.files["registry"].ca)
    async with channel_as(presented, registry.address) as channel:
        error = await refused(list_models(channel))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_server_signed_by_another_ca_is_refused_by_the_client(
    registry: RegistryApp,
    certs: Pki,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    other = pki.ensure_pki(tmp_path / "other")
    with caplog.at_level(logging.ERROR):
        async with channel_as(other["controller"], registry.address) as channel:
            error = await refused(list_models(channel))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    ca = other["controller"].ca
    assert f"the registry's certificate is not signed by the CA in {ca}" in caplog.text


async def test_a_server_with_another_identity_is_refused_by_the_client(
    registry: RegistryApp, certs: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """Signed by our CA, but not the service the client meant to call."""
    with caplog.at_level(logging.ERROR):
        async with channel_as(
            certs.files["gateway"], registry.address, peer="controller"
        ) as channel:
            error = await refused(
                controller_pb2_grpc.ControllerStub(channel).GetReplicas(
                    cpb.GetReplicasRequest(model_infer="iris"), timeout=5
                )
            )
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert (
        "the server there is not the controller: its certificate does not name "
        "controller.matrixinfer.internal" in caplog.text
    )


async def test_a_client_with_an_unknown_identity_is_refused(
    registry: RegistryApp, certs: Pki
) -> None:
    """Signed by our CA, but the name is no service's: no scope at all."""
    stranger = certs.odd("intruder")
    async with channel_as(stranger, registry.address) as channel:
        error = await refused(list_models(channel))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        "cert:intruder.matrixinfer.internal may not read Model in every namespace: "
        "needs scope read or admin"
    )


async def test_a_plaintext_client_is_refused(registry: RegistryApp) -> None:
    async with create_channel(registry.address, retry_attempts=1) as channel:
        error = await refused(list_models(channel))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def served_certificate(address: str, client: pki.CertFiles) -> x509.Certificate:
    """What the server presents to a new connection now."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(client.ca))
    context.check_hostname = False
    context.load_cert_chain(client.cert, client.key)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_rotated_certificates_are_served_and_accepted_without_restart(
    registry: RegistryApp, certs: Pki
) -> None:
    controller = certs.files["controller"]
    before = await asyncio.to_thread(served_certificate, registry.address, controller)
    channel = create_channel(registry.address, tls=ClientTls(controller, "registry"))
    try:
        await list_models(channel)
        # Both sides' certificates are replaced in place, as cert-manager does.
        await asyncio.sleep(1.1)  # a new mtime even on coarse file systems
        pki.issue(certs.authority, "registry", certs.directory)
        pki.issue(certs.authority, "controller", certs.directory)
        new_registry = x509.load_pem_x509_certificate(
            certs.files["registry"].cert.read_bytes()
        )

        after = await asyncio.to_thread(
            served_certificate, registry.address, controller
        )
        assert after.serial_number == new_registry.serial_number
        assert after.serial_number != before.serial_number
        assert registry.server.tls is not None and registry.server.tls.reloads == 1
        # The same channel object (stubs made before) goes on with the new one.
        await asyncio.sleep(1.1)
        assert list((await list_models(channel)).items) == []
        assert channel.rebuilds == 1
    finally:
        await channel.close()


@pytest_asyncio.fixture
async def controller(
    registry: RegistryApp, certs: Pki, tmp_path: pathlib.Path
) -> AsyncIterator[ControllerApp]:
    app = await ControllerApp.start(
        ControllerSettings(
            registry_address=registry.address,
            grpc_port=0,
            state_dir=tmp_path / "controller",
            log_json=False,
            **tls_settings(certs.files["controller"]),  # type: ignore[arg-type]
        ),
        runtime=FakeRuntime(),
    )
    try:
        yield app
    finally:
        await app.stop(0)


async def test_the_controller_takes_scale_only_from_the_autoscaler(
    controller: ControllerApp, certs: Pki
) -> None:
    request = cpb.ScaleRequest(model_infer="iris", replicas=1)
    async with channel_as(
        certs.files["gateway"], controller.address, "controller"
    ) as ch:
        error = await refused(
            controller_pb2_grpc.ControllerStub(ch).Scale(request, timeout=5)
        )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        "service:gateway may not call controller Scale: needs scope admin or "
        "controller:scale"
    )
    async with channel_as(
        certs.files["autoscaler"], controller.address, "controller"
    ) as ch:
        error = await refused(
            controller_pb2_grpc.ControllerStub(ch).Scale(request, timeout=5)
        )
    # Past authorization: the ModelInfer does not exist.
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_controller_logs_need_an_admin(
    controller: ControllerApp, certs: Pki
) -> None:
    request = cpb.GetLogsRequest(model_infer="iris")
    async with channel_as(
        certs.files["autoscaler"], controller.address, "controller"
    ) as ch:
        stream = controller_pb2_grpc.ControllerStub(ch).GetLogs(request, timeout=5)
        error = await refused(stream.read())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        "service:autoscaler may not call controller GetLogs: needs scope admin"
    )
    async with channel_as(certs.files["admin"], controller.address, "controller") as ch:
        stream = controller_pb2_grpc.ControllerStub(ch).GetLogs(request, timeout=5)
        error = await refused(stream.read())
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_the_autoscaler_takes_activate_only_from_gateways(
    controller: ControllerApp, registry: RegistryApp, certs: Pki
) -> None:
    app = await AutoscalerApp.start(
        AutoscalerSettings(
            registry_address=registry.address,
            controller_address=controller.address,
            grpc_port=0,
            log_json=False,
            **tls_settings(certs.files["autoscaler"]),  # type: ignore[arg-type]
        )
    )
    try:
        # Its informer reached the registry over mTLS with its own certificate.
        await asyncio.wait_for(app.informer.wait_synced(timeout_s=30), 35)
        request = apb.ActivateRequest(model_infer="iris")
        async with channel_as(
            certs.files["controller"], app.address, "autoscaler"
        ) as ch:
            error = await refused(
                autoscaler_pb2_grpc.AutoscalerStub(ch).Activate(request, timeout=5)
            )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error.details() == (
            "service:controller may not call autoscaler Activate: needs scope admin "
            "or autoscaler:load"
        )
        async with channel_as(certs.files["gateway"], app.address, "autoscaler") as ch:
            error = await refused(
                autoscaler_pb2_grpc.AutoscalerStub(ch).Activate(request, timeout=5)
            )
        assert error.code() != grpc.StatusCode.PERMISSION_DENIED
    finally:
        await app.stop(0)


def run_cli(config: Config, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), obj=App(config, timeout_s=5))
    return result.exit_code, result.output


async def test_the_cli_uses_its_client_certificate(
    registry: RegistryApp, certs: Pki
) -> None:
    admin = certs.files["admin"]
    plain = Config(
        server=registry.address,
        gateway="http://127.0.0.1:1",
        gateway_grpc="127.0.0.1:1",
        controller="127.0.0.1:1",
        token="",
        namespace="default",
    )
    with_cert = dataclasses.replace(
        plain, tls_ca=str(admin.ca), tls_cert=str(admin.cert), tls_key=str(admin.key)
    )
    code, output = await asyncio.to_thread(run_cli, with_cert, "get", "models")
    assert (code, output) == (0, "No Model resources found.\n")

    code, output = await asyncio.to_thread(run_cli, plain, "get", "models")
    assert code == 3
    assert "If it requires mTLS, set tls_ca, tls_cert and tls_key" in output
    # `version` asks for health over mTLS too.
    code, output = await asyncio.to_thread(run_cli, with_cert, "version")
    assert code == 0
    assert f"registry         {registry.address}: SERVING" in output


async def test_probes_reach_a_plaintext_health_port_that_serves_nothing_else(
    tmp_path: pathlib.Path, certs: Pki
) -> None:
    """The kubelet's gRPC probe has no client certificate: health_port answers it
    in plaintext with the main port's health, and offers no other method."""
    app = await RegistryApp.start(
        registry_settings(
            f"sqlite+aiosqlite:///{tmp_path}/health.db",
            health_port=0,
            **tls_settings(certs.files["registry"]),
        )
    )
    try:
        assert app.server.health_port is not None
        health_address = f"127.0.0.1:{app.server.health_port}"
        async with create_channel(health_address, retry_attempts=1) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            answer = await check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            error = await refused(list_models(channel))
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        # The main port still takes mTLS only.
        async with create_channel(app.address, retry_attempts=1) as channel:
            error = await refused(list_models(channel))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        await app.server.health.enter_graceful_shutdown()
        async with create_channel(health_address, retry_attempts=1) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            answer = await check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await app.stop(0)
