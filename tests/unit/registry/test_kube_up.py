"""`matrixinfer up` prints the registry's Kubernetes API and a kubectl line that
works as printed: HTTPS on the registry's certificate (whose name is
registry.matrixinfer.internal, not the address), as the admin client certificate
or, with `up --auth`, the admin API key."""

from __future__ import annotations

import io
import pathlib
import shlex

from rich.console import Console

from matrixinfer.cli.up import EdgeAccess, print_endpoints
from matrixinfer.core.pki import CertFiles

ADMIN = CertFiles(
    pathlib.Path("/state/pki/admin.crt"),
    pathlib.Path("/state/pki/admin.key"),
    pathlib.Path("/state/pki/ca.crt"),
)


def printed(quickstart: bool, edge: EdgeAccess | None = None) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200, highlight=False, color_system=None)
    print_endpoints(
        console,
        8001,
        8000,
        50051,
        "/state",
        quickstart=quickstart,
        kube_port=50053,
        edge=edge,
        kube_client=ADMIN,
    )
    return out.getvalue()


def kubectl_line(text: str) -> list[str]:
    kubectl = [line for line in text.splitlines() if "--server" in line]
    assert len(kubectl) == 1
    assert kubectl[0].startswith("  ")
    argv = shlex.split(kubectl[0])
    assert argv[0].endswith("kubectl")
    return argv[1:]


def test_up_prints_the_kubernetes_url_and_a_kubectl_line() -> None:
    for quickstart in (True, False):
        text = printed(quickstart)

        assert "  Kubernetes API (kubectl):         https://127.0.0.1:50053" in (
            text.splitlines()
        )
        assert kubectl_line(text) == [
            "--server",
            "https://127.0.0.1:50053",
            "--certificate-authority",
            "/state/pki/ca.crt",
            "--tls-server-name",
            "registry.matrixinfer.internal",
            "--client-certificate",
            "/state/pki/admin.crt",
            "--client-key",
            "/state/pki/admin.key",
            "get",
            "modelinfers",
        ]


def test_with_auth_the_kubectl_line_sends_the_admin_key() -> None:
    edge = EdgeAccess(key_file=pathlib.Path("/state/admin-api-key"))

    argv = kubectl_line(printed(True, edge))

    assert argv == [
        "--server",
        "https://127.0.0.1:50053",
        "--certificate-authority",
        "/state/pki/ca.crt",
        "--tls-server-name",
        "registry.matrixinfer.internal",
        "--token",
        "$(cat /state/admin-api-key)",
        "get",
        "modelinfers",
    ]


def test_a_long_kubectl_line_is_not_wrapped() -> None:
    long = pathlib.Path("/" + "very-long-folder-name/" * 12)
    out = io.StringIO()
    console = Console(file=out, width=80, highlight=False, color_system=None)
    admin = CertFiles(long / "admin.crt", long / "admin.key", long / "ca.crt")
    print_endpoints(
        console, 8001, 8000, 50051, "/state", kube_port=50053, kube_client=admin
    )

    assert kubectl_line(out.getvalue())[-2:] == ["get", "modelinfers"]
