"""The ``matrixinfer`` command: kubectl-like access to the registry.

This is the first slice (apply, get, delete, history, rollback); the platform issue
grows it into the full CLI. Exit codes: 0 success, 1 the server refused or failed,
2 bad usage, 3 the registry could not be reached.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import click
import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.grpc.errors import error_details

T = TypeVar("T")
DEFAULT_SERVER = "127.0.0.1:50051"
EXIT_SERVER, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def _object(resource: pb.Resource) -> Message:
    which = resource.WhichOneof("object")
    assert which is not None
    obj: Message = getattr(resource, which)
    return obj


def _as_dict(resource: pb.Resource) -> dict[str, Any]:
    return json_format.MessageToDict(_object(resource))


def _call(fn: Callable[[], T], where: str = "") -> T:
    """Run one RPC; turn its failure into a message and an exit code."""
    try:
        return fn()
    except grpc.RpcError as e:
        details = error_details(e)
        if details.code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ):
            click.echo(
                f"error: cannot reach the registry ({details.message}); is it running? "
                "Start it with `make run`, or point --server at it.",
                err=True,
            )
            sys.exit(EXIT_UNREACHABLE)
        head = f"error ({details.code.name}): " + (f"{where}: " if where else "")
        violations = details.field_violations
        if violations:
            click.echo(f"{head}fix these fields:", err=True)
            for field, description in violations:
                click.echo(f"  {field}: {description}", err=True)
        else:
            click.echo(f"{head}{details.message}", err=True)
        sys.exit(EXIT_SERVER)


def _read_manifests(paths: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    for path in paths:
        if path == "-":
            yield "<stdin>", sys.stdin.read()
            continue
        p = pathlib.Path(path)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix in MANIFEST_SUFFIXES)
            if not files:
                raise click.UsageError(f"{path}: no .yaml, .yml or .json files")
            for f in files:
                yield str(f), f.read_text()
        elif p.is_file():
            yield path, p.read_text()
        else:
            raise click.UsageError(f"{path}: no such file or folder")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    envvar="MATRIXINFER_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    help="Registry address (host:port); env MATRIXINFER_SERVER.",
)
@click.option(
    "--timeout", "timeout_s", default=10.0, show_default=True, help="Seconds per call."
)
@click.pass_context
def cli(ctx: click.Context, server: str, timeout_s: float) -> None:
    """MatrixInfer: declare models, deploy them on Triton, serve them."""
    channel = grpc.insecure_channel(server)
    ctx.call_on_close(channel.close)
    ctx.obj = (registry_pb2_grpc.RegistryStub(channel), timeout_s)


@cli.command()
@click.option("-f", "--filename", "paths", multiple=True, required=True,
              help="Manifest file, folder, or - for stdin (repeatable).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Validate and default; store nothing.")
@click.pass_obj
def apply(obj: tuple[Any, float], paths: tuple[str, ...], dry_run: bool) -> None:
    """Create or update resources from manifests (all documents of a file at once)."""
    stub, timeout_s = obj
    for source, text in _read_manifests(paths):
        request = rpb.ApplyRequest(manifest=text, dry_run=dry_run)
        response: rpb.ApplyResponse = _call(
            functools.partial(stub.Apply, request, timeout=timeout_s), source
        )
        for result in response.results:
            o = _as_dict(result.resource)
            suffix = " (dry run)" if dry_run else ""
            click.echo(
                f"{o['kind'].lower()}/{o['metadata']['name']} {result.action}{suffix}"
            )


@cli.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option(
    "-n", "--namespace", default="", help="Namespace (default: all for lists)."
)
@click.option(
    "-l", "--selector", default="", help="Label selector, e.g. app=demo,tier!=cpu."
)
@click.option(
    "-o", "--output", type=click.Choice(["table", "yaml", "json"]), default="table"
)
@click.pass_obj
def get(
    obj: tuple[Any, float], kind: str, name: str | None, namespace: str, selector: str,
    output: str,
) -> None:  # fmt: skip
    """Show one resource or list them (kind: model, modelinfer, modelserver, ...)."""
    stub, timeout_s = obj
    items: list[pb.Resource] = []
    if name:
        items.append(
            _call(
                lambda: stub.Get(
                    rpb.GetRequest(
                        kind=kind, namespace=namespace or "default", name=name
                    ),
                    timeout=timeout_s,
                )
            )
        )
    else:
        token = ""
        while True:
            request = rpb.ListRequest(
                kind=kind, namespace=namespace, label_selector=selector
            )
            setattr(request, "continue", token)  # noqa: B010 - `continue` is a keyword
            page: rpb.ListResponse = _call(
                functools.partial(stub.List, request, timeout=timeout_s)
            )
            items.extend(page.items)
            token = getattr(page, "continue")
            if not token:
                break
    dicts = [_as_dict(i) for i in items]
    if output == "json":
        click.echo(json.dumps(dicts[0] if name else dicts, indent=2))
    elif output == "yaml":
        click.echo(yaml.safe_dump_all(dicts, sort_keys=False).rstrip())
    else:
        rows = [
            (
                d["metadata"].get("namespace", ""),
                d["metadata"]["name"],
                str(d["metadata"].get("generation", "")),
                d["metadata"].get("creationTimestamp", ""),
            )
            for d in dicts
        ]
        _table(("NAMESPACE", "NAME", "GENERATION", "CREATED"), rows)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for row in (header, *rows):
        click.echo(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )


@cli.command()
@click.argument("kind")
@click.argument("name")
@click.option("-n", "--namespace", default="default")
@click.pass_obj
def delete(obj: tuple[Any, float], kind: str, name: str, namespace: str) -> None:
    """Delete a resource (it stays until its finalizers are removed)."""
    stub, timeout_s = obj
    request = rpb.DeleteRequest(kind=kind, namespace=namespace, name=name)
    resource = _call(lambda: stub.Delete(request, timeout=timeout_s))
    o = _as_dict(resource)
    pending = o["metadata"].get("finalizers")
    state = f"deleting (waiting for {', '.join(pending)})" if pending else "deleted"
    click.echo(f"{o['kind'].lower()}/{name} {state}")


@cli.command()
@click.argument("model")
@click.option("-n", "--namespace", default="default")
@click.pass_obj
def history(obj: tuple[Any, float], model: str, namespace: str) -> None:
    """List a Model's revisions."""
    stub, timeout_s = obj
    request = rpb.ListRevisionsRequest(namespace=namespace, name=model)
    response = _call(lambda: stub.ListRevisions(request, timeout=timeout_s))
    rows = [
        (
            str(r.revision),
            r.model.spec.model_spec.version,
            r.model.spec.model_spec.source.uri,
            r.created.ToJsonString(),
        )
        for r in response.revisions
    ]
    _table(("REVISION", "VERSION", "SOURCE", "CREATED"), rows)


@cli.command()
@click.argument("model")
@click.argument("revision", type=click.IntRange(min=1))
@click.option("-n", "--namespace", default="default")
@click.pass_obj
def rollback(obj: tuple[Any, float], model: str, revision: int, namespace: str) -> None:
    """Make a new revision of MODEL equal to REVISION."""
    stub, timeout_s = obj
    request = rpb.RollbackRequest(namespace=namespace, name=model, revision=revision)
    resource = _call(lambda: stub.Rollback(request, timeout=timeout_s))
    current = resource.model.status.current_revision
    click.echo(
        f"model/{model} rolled back to revision {revision} (now revision {current})"
    )


def main() -> None:
    cli(prog_name="matrixinfer")
