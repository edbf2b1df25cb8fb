"""`matrixinfer up` prints the registry's Kubernetes API and a kubectl line."""

from __future__ import annotations

import io

from rich.console import Console

from matrixinfer.cli.up import print_endpoints


def printed(quickstart: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200, highlight=False, color_system=None)
    print_endpoints(
        console, 8001, 8000, 50051, "/state", quickstart=quickstart, kube_port=50053
    )
    return out.getvalue()


def test_up_prints_the_kubernetes_url_and_a_kubectl_line() -> None:
    for quickstart in (True, False):
        lines = printed(quickstart).splitlines()

        assert "  Kubernetes API (kubectl):         http://127.0.0.1:50053" in lines
        kubectl = [line for line in lines if "--server" in line]
        assert len(kubectl) == 1
        assert kubectl[0].startswith("  ")
        assert kubectl[0].endswith(
            "kubectl --server http://127.0.0.1:50053 get modelinfers"
        )
