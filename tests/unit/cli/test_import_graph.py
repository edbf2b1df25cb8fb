"""What the CLI imports, checked structurally (never by time): `matrixinfer --help`
must load click and the command modules only, and no command may load server code.

Each case runs in a fresh interpreter (this test process has imported everything
already) and reports ``sys.modules`` after the command. Start-up time itself is
measured by ``python -m bench.cli``, not here.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import pytest

#: Heavy libraries the commands import where they use them; `--help` (of the group or
#: of any command) must not load them.
NOT_FOR_HELP = (
    "grpc",
    "grpc_health",
    "grpc_status",
    "google.protobuf",
    "google.rpc",
    "matrixinfer.api",
    "matrixinfer.core.grpc",
    "matrixinfer.triton",
    "numpy",
    "rich",
    "yaml",
    "prometheus_client",
)

#: Server code: no CLI command needs it (the services import it).
SERVER_ONLY = (
    "pydantic",
    "pydantic_settings",
    "opentelemetry",
    "matrixinfer.core.settings",
    "matrixinfer.core.tracing",
    "matrixinfer.core.grpc.server",
    "matrixinfer.core.grpc.channel",
    "matrixinfer.core.grpc.interceptors",
    "matrixinfer.registry",
    "matrixinfer.controller",
    "matrixinfer.gateway",
    "matrixinfer.autoscaler",
)

PROBE = textwrap.dedent(
    """
    import json, sys

    report, args = sys.argv[1], sys.argv[2:]
    code = None
    from matrixinfer.cli.main import cli
    if args:
        try:
            cli.main(args, prog_name="matrixinfer")
        except SystemExit as e:
            code = e.code
    with open(report, "w") as f:
        json.dump({"code": code, "modules": sorted(sys.modules)}, f)
    """
)


def loaded(tmp_path: pathlib.Path, *args: str) -> tuple[int | None, set[str]]:
    """The exit code of ``matrixinfer ARGS`` (None: only imported) and the modules
    loaded by then, in a fresh interpreter without a config file."""
    report = tmp_path / "modules.json"
    env = {
        **os.environ,
        "MATRIXINFER_CONFIG": "",
        "XDG_CONFIG_HOME": str(tmp_path / "no-config"),
        "MATRIXINFER_TOKEN": "",
    }
    subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *args],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    result = json.loads(report.read_text())
    return result["code"], set(result["modules"])


def under(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(
        m for m in modules for p in packages if m == p or m.startswith(p + ".")
    )


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--help",),
        ("get", "--help"),
        ("apply", "--help"),
        ("describe", "--help"),
        ("infer", "--help"),
        ("logs", "--help"),
        ("top", "--help"),
        ("apikey", "create", "--help"),
        ("up", "--help"),
    ],
    ids=lambda args: " ".join(args) or "import",
)
def test_help_loads_no_heavy_library(tmp_path: pathlib.Path, args: tuple[str]) -> None:
    code, modules = loaded(tmp_path, *args)
    assert code in (None, 0)
    assert "matrixinfer.cli.main" in modules
    assert under(modules, NOT_FOR_HELP + SERVER_ONLY) == []


def test_a_registry_command_loads_no_server_code(tmp_path: pathlib.Path) -> None:
    """`get` through gRPC and its error path (an unreachable registry: a port that
    is bound but not listening refuses the connection)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        code, modules = loaded(
            tmp_path,
            "--server", f"127.0.0.1:{port}", "--timeout", "10", "get", "modelinfers",
        )  # fmt: skip
    assert code == 3  # unreachable
    assert {"grpc", "matrixinfer.core.grpc.errors"} <= modules  # the path was taken
    assert under(modules, SERVER_ONLY) == []
