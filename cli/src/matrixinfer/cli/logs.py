"""``matrixinfer logs``: a ModelInfer's replica logs, from the controller."""

from __future__ import annotations

import sys

import click

from matrixinfer.cli.client import EXIT_OK, App, auth_metadata, rpc_error
from matrixinfer.cli.resources import namespace_option

pass_app = click.make_pass_decorator(App)


@click.command()
@click.argument("model_infer")
@click.option(
    "--replica", default="",
    help="One replica (see `matrixinfer describe mi NAME`); default: every replica.",
)  # fmt: skip
@click.option(
    "--tail", type=click.IntRange(min=-1), default=-1, show_default=True,
    help="Only the last N lines of each replica (-1: the whole log).",
)  # fmt: skip
@click.option(
    "-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops)."
)
@click.option(
    "--prefix/--no-prefix", default=None,
    help="Start each line with [replica] (default: unless --replica is given).",
)  # fmt: skip
@namespace_option
@pass_app
def logs(
    app: App, model_infer: str, replica: str, tail: int, follow: bool,
    prefix: bool | None, namespace: str | None,
) -> None:  # fmt: skip
    """Print the server logs of a ModelInfer's current replicas (from the controller,
    --controller)."""
    import grpc

    from matrixinfer.api.v1 import controller_pb2 as cpb

    request = cpb.GetLogsRequest(
        namespace=app.namespace(namespace),
        model_infer=model_infer,
        replica=replica,
        follow=follow,
    )
    if tail >= 0:
        request.tail_lines = tail
    show_prefix = not replica if prefix is None else prefix
    stub = app.controller()
    stream = stub.GetLogs(
        request,
        timeout=None if follow else max(app.timeout_s, 60.0),
        metadata=auth_metadata(app.config.token),
    )
    printed = False
    try:
        for chunk in stream:
            printed = True
            for line in chunk.lines:
                click.echo(f"[{chunk.replica}] {line}" if show_prefix else line)
        if not printed:
            click.echo(
                f"modelinfer/{model_infer} has no running replica (scaled to zero, "
                "or not started yet): no logs to show",
                err=True,
            )
    except grpc.RpcError as e:
        raise rpc_error(e, "controller", app.config.controller) from None
    except KeyboardInterrupt:
        stream.cancel()
        sys.exit(EXIT_OK)
