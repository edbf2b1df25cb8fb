"""The ``matrixinfer`` command: kubectl-like access to the platform.

Resources (apply, get, describe, delete, history, rollback) go to the registry,
``logs`` to the controller, ``infer`` and ``top`` to the gateway (``top`` to the
registry too). Exit codes: 0 success, 1 the server refused or failed (or a wait
timed out), 2 bad usage, 3 a server could not be reached.

Start-up time: importing this module (what ``--help`` costs) loads click and the
command modules, nothing more. gRPC, protobuf and the generated stubs, numpy, rich,
PyYAML, prometheus_client and matrixinfer.core.grpc are imported inside the functions
that use them (tests/unit/cli/test_import_graph.py checks it; ``python -m
bench.cli`` measures it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from matrixinfer.cli.apikey import apikey
from matrixinfer.cli.audit import audit
from matrixinfer.cli.client import App, CliError, UsageFailure, health
from matrixinfer.cli.config import CONFIG_ENV, DEFAULTS, ConfigError, resolve
from matrixinfer.cli.infer import infer
from matrixinfer.cli.logs import logs
from matrixinfer.cli.resources import apply, delete, describe, get, history, rollback
from matrixinfer.cli.top import top
from matrixinfer.cli.up import up

F = TypeVar("F", bound=Callable[..., Any])


def _address_option(name: str, what: str) -> Callable[[F], F]:
    key = name.lstrip("-").replace("-", "_")
    return click.option(
        name,
        key,
        default=None,
        metavar="ADDRESS",
        help=f"{what} [default: {DEFAULTS[key]}; env MATRIXINFER_{key.upper()}].",
    )


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=f"Settings come from flags, then MATRIXINFER_* variables, then the config "
    f"file (${CONFIG_ENV}, else ~/.config/matrixinfer/config.yaml: keys "
    f"{', '.join(DEFAULTS)}). Exit codes: 0 done, 1 refused or failed, 2 bad usage, "
    "3 a server is unreachable.",
)
@_address_option("--server", "Registry (host:port)")
@_address_option("--gateway", "Gateway KServe v2 REST URL")
@_address_option("--gateway-grpc", "Gateway KServe v2 gRPC (host:port), for --grpc")
@_address_option("--controller", "Controller (host:port), for logs")
@click.option(
    "--token",
    default=None,
    help="API key or JWT, sent as `authorization: Bearer`; env MATRIXINFER_TOKEN.",
)
@click.option(
    "--timeout", "timeout_s", default=10.0, show_default=True, help="Seconds per call."
)
@click.version_option(
    package_name="matrixinfer-cli",
    prog_name="matrixinfer",
    message="%(prog)s %(version)s",
)
@click.pass_context
def cli(
    ctx: click.Context, server: str | None, gateway: str | None,
    gateway_grpc: str | None, controller: str | None, token: str | None,
    timeout_s: float,
) -> None:  # fmt: skip
    """MatrixInfer: declare models, deploy them on Triton, serve them."""
    if isinstance(ctx.obj, App):  # supplied by a test
        return
    flags = {
        "server": server,
        "gateway": gateway,
        "gateway_grpc": gateway_grpc,
        "controller": controller,
        "token": token,
    }
    try:
        config = resolve(flags)
    except ConfigError as e:
        raise UsageFailure(f"error: {e}") from None
    app = App(config, timeout_s)
    ctx.obj = app
    ctx.call_on_close(app.close)


for command in (apply, get, describe, delete, history, rollback, infer, logs, top):
    cli.add_command(command)
cli.add_command(apikey)
cli.add_command(audit)
cli.add_command(up)


def _health(app: App, address: str, service: str, timeout_s: float) -> str:
    state = health(address, timeout_s, app.config.tls, service)
    return state if state.startswith("unreachable") else f"{state} (reports no version)"


@cli.command()
@click.pass_obj
def version(app: App) -> None:
    """The CLI's version and, where reachable, the servers'."""
    import importlib.metadata

    click.echo(f"matrixinfer-cli  {importlib.metadata.version('matrixinfer-cli')}")
    timeout_s = min(app.timeout_s, 3.0)
    registry = _health(app, app.config.server, "registry", timeout_s)
    click.echo(f"registry         {app.config.server}: {registry}")
    controller = _health(app, app.config.controller, "controller", timeout_s)
    click.echo(f"controller       {app.config.controller}: {controller}")
    try:
        response = app.gateway.request("/v2")
        meta = response.json() if response.status == 200 else {}
        gateway = f"{meta.get('name', 'gateway')} {meta.get('version', '?')}"
    except CliError:
        gateway = "unreachable"
    except ValueError:
        gateway = "answers, but not KServe v2 JSON on /v2"
    click.echo(f"gateway          {app.config.gateway}: {gateway}")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script, e.g. in ~/.bashrc:
    eval "$(matrixinfer completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "matrixinfer", "_MATRIXINFER_COMPLETE").source())


def main() -> None:
    cli(prog_name="matrixinfer")
