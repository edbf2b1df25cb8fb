"""Commands on resources in the registry: apply, get, describe, delete, history,
rollback."""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from matrixinfer.cli import render
from matrixinfer.cli.client import EXIT_OK, App, Registry, as_dict, rpc_error
from matrixinfer.cli.kinds import help_text, resolve_kind
from matrixinfer.cli.wait import Target, wait_available

if TYPE_CHECKING:
    from matrixinfer.api.v1 import resources_pb2 as pb

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
pass_app = click.make_pass_decorator(App)
namespace_option = click.option(
    "-n",
    "--namespace",
    default=None,
    help="Namespace (default: the config's namespace, else 'default').",
)


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


def _combined(sources: list[tuple[str, str]]) -> tuple[str, str]:
    """One manifest of several files, and a name for it that says which documents
    (``manifest[i]`` in the registry's error messages) came from which file."""
    import yaml

    parts, legend, index = [], [], 0
    for name, text in sources:
        try:
            count = sum(1 for doc in yaml.safe_load_all(text) if doc is not None)
        except yaml.YAMLError as e:
            raise click.UsageError(f"{name}: not valid YAML or JSON: {e}") from None
        if count:
            span = f"{index}" if count == 1 else f"{index}-{index + count - 1}"
            legend.append(f"manifest[{span}] = {name}")
            parts.append(text.strip().removeprefix("---"))
            index += count
    # A leading marker: the registry reads text starting with { or [ as JSON.
    return "; ".join(legend), "---\n" + "\n---\n".join(parts)


wait_timeout_option = click.option(
    "--timeout",
    "wait_timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds --wait waits before failing with the Degraded condition's message.",
)


@click.command()
@click.option("-f", "--filename", "paths", multiple=True, required=True,
              help="Manifest file, folder, or - for stdin (repeatable).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Validate and default; store nothing.")
@click.option(
    "--wait",
    is_flag=True,
    help="Then wait until every applied ModelInfer is available (ready replicas "
    "reach the desired count on the applied revision).",
)
@wait_timeout_option
@pass_app
def apply(
    app: App, paths: tuple[str, ...], dry_run: bool, wait: bool, wait_timeout_s: float
) -> None:
    """Create or update resources from manifests (all documents of a file at once)."""
    if wait and dry_run:
        raise click.UsageError("--wait cannot be used with --dry-run")
    registry = app.registry
    applied: list[tuple[Target, pb.ModelRef]] = []
    revisions: dict[tuple[str, str], int] = {}
    sources = list(_read_manifests(paths))
    if len(sources) == 1:
        source, text = sources[0]
    else:
        # Every document of every file in one Apply: one transaction (all or
        # nothing), and references between files resolve whatever their order.
        source, text = _combined(sources)
    for response in [registry.apply(text, dry_run, source)]:
        for result in response.results:
            o = as_dict(result.resource)
            suffix = " (dry run)" if dry_run else ""
            click.echo(
                f"{o['kind'].lower()}/{o['metadata']['name']} {result.action}{suffix}"
            )
            which = result.resource.WhichOneof("object")
            if which == "model":
                model = result.resource.model
                key = (model.metadata.namespace, model.metadata.name)
                revisions[key] = model.status.current_revision
            elif which == "model_infer":
                meta = result.resource.model_infer.metadata
                target = Target(meta.namespace, meta.name, meta.generation)
                applied.append((target, result.resource.model_infer.spec.model_ref))
    if not wait:
        return
    targets = []
    for target, ref in applied:
        # A ModelInfer following its Model's latest revision must serve the one just
        # applied (a new Model revision rolls it over without a new generation).
        if not ref.revision:
            target.model_revision = revisions.get((target.namespace, ref.name))
        targets.append(target)
    seen = {(t.namespace, t.name) for t in targets}
    for (namespace, model_name), revision in revisions.items():
        # A Model applied alone: wait for the ModelInfers that follow it to roll over.
        targets += [
            t
            for t in _followers(registry, namespace, model_name, revision)
            if (t.namespace, t.name) not in seen
        ]
    if not targets:
        click.echo(
            "nothing to wait for: no ModelInfer was applied or follows an "
            "applied Model",
            err=True,
        )
        return
    from rich.console import Console

    wait_available(registry, targets, wait_timeout_s, Console(stderr=True))
    for t in targets:
        ready, desired = t.counts()
        revision = t.infer.status.model_revision if t.infer is not None else 0
        click.echo(
            f"{t.label} available ({ready}/{desired} ready, model revision {revision})"
        )


def _objects(
    app: App, kind: str, name: str | None, namespace: str, selector: str
) -> tuple[list[dict[str, Any]], str]:
    if name:
        return [as_dict(app.reader.get(kind, namespace, name))], ""
    items, version = app.reader.list_objects(kind, namespace, selector)
    return [as_dict(i) for i in items], version


def _print(
    objects: list[dict[str, Any]], output: str, single: bool, kind: str, app: App,
    all_namespaces: bool,
) -> None:  # fmt: skip
    if output == "json":
        click.echo(render.as_json(objects, single))
    elif output == "yaml":
        click.echo(render.as_yaml(objects))
    elif not objects:
        click.echo(f"No {kind} resources found.", err=True)
    else:
        click.echo(
            render.table(kind, objects, app.now(), output == "wide", all_namespaces)
        )


@click.command()
@click.argument("kind")
@click.argument("name", required=False)
@namespace_option
@click.option(
    "-A", "--all-namespaces", is_flag=True, help="List across every namespace."
)
@click.option(
    "-l", "--selector", default="", help="Label selector, e.g. app=demo,tier!=cpu."
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "wide", "yaml", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "-w",
    "--watch",
    is_flag=True,
    help="After the list, print each change as it happens (Ctrl-C stops).",
)
@pass_app
def get(
    app: App, kind: str, name: str | None, namespace: str | None, all_namespaces: bool,
    selector: str, output: str, watch: bool,
) -> None:  # fmt: skip
    """Show one resource or list them.

    KIND is a kind or an alias:"""
    kind = resolve_kind(kind)
    if name and selector:
        raise click.UsageError("use either NAME or -l/--selector, not both")
    if name and all_namespaces:
        raise click.UsageError("NAME needs one namespace (-n), not -A")
    ns = "" if all_namespaces else app.namespace(namespace)
    if not watch:
        objects, _ = _objects(app, kind, name, ns, selector)
        _print(objects, output, bool(name), kind, app, all_namespaces)
        return
    try:
        _watch(app, kind, name, ns, selector, output, all_namespaces)
    except KeyboardInterrupt:
        sys.exit(EXIT_OK)


get.help = (
    "Show one resource or list them (-w: then every change).\n\n"
    f"KIND is a kind or an alias: {help_text()}."
)


def _watch(
    app: App, kind: str, name: str | None, namespace: str, selector: str, output: str,
    all_namespaces: bool,
) -> None:  # fmt: skip
    import grpc
    import yaml

    from matrixinfer.core.grpc.errors import error_details

    registry = app.registry
    cols = render.columns(kind, output == "wide", all_namespaces)
    header = [h for h, _ in cols]
    widths: list[int] | None = None

    def emit(objects: list[dict[str, Any]], first: bool) -> None:
        nonlocal widths
        if output == "json":
            for o in objects:
                click.echo(json.dumps(o))
        elif output == "yaml":
            for o in objects:
                click.echo("---\n" + yaml.safe_dump(o, sort_keys=False).rstrip())
        else:
            rows = render.table_rows(cols, objects, app.now())
            if widths is None:
                widths = [w + 2 for w in render.column_widths(header, rows)]
            lines = render.format_table(header, rows, widths)
            for line in lines if first else lines[1:]:
                click.echo(line)

    first = True
    while True:
        items, version = registry.list_objects(kind, namespace, selector)
        objects = [as_dict(i) for i in items]
        if name:
            objects = [o for o in objects if o["metadata"]["name"] == name]
            if first and not objects:
                registry.get(kind, namespace, name)  # NOT_FOUND, in the server's words
        emit(objects, first)
        first = False
        try:
            for event in registry.watch(kind, namespace, selector, version):
                if event.type == "BOOKMARK" or not event.HasField("object"):
                    continue
                o = as_dict(event.object)
                if name and o["metadata"]["name"] != name:
                    continue
                emit([o], False)
        except grpc.RpcError as e:
            if error_details(e).code != grpc.StatusCode.OUT_OF_RANGE:
                raise rpc_error(e, "registry", registry.address) from None
            # Our resourceVersion expired: list again, then watch from there.


@click.command()
@click.argument("kind")
@click.argument("name")
@namespace_option
@click.option(
    "--revisions",
    "revision_count",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many recent revisions of a Model to show.",
)
@pass_app
def describe(
    app: App, kind: str, name: str, namespace: str | None, revision_count: int
) -> None:
    """Show a resource in detail: metadata, spec, status, a conditions table
    (type, status, reason, message, last transition), the endpoints of a ModelInfer
    and the recent revisions of a Model.

    MatrixInfer has no events API: conditions and revisions are what show recent
    changes."""
    from google.protobuf import json_format

    kind = resolve_kind(kind)
    ns = app.namespace(namespace)
    resource = app.reader.get(kind, ns, name)
    revisions: list[dict[str, Any]] = []
    total = 0
    if kind == "Model":
        listed = app.reader.list_revisions(ns, name)
        total = len(listed)
        newest = sorted(listed, key=lambda r: r.revision, reverse=True)
        revisions = [json_format.MessageToDict(r) for r in newest[:revision_count]]
    click.echo(render.describe(as_dict(resource), app.now(), revisions, total))


@click.command()
@click.argument("kind")
@click.argument("name")
@namespace_option
@pass_app
def delete(app: App, kind: str, name: str, namespace: str | None) -> None:
    """Delete a resource (it stays until its finalizers are removed)."""
    from matrixinfer.api.v1 import registry_pb2 as rpb

    kind = resolve_kind(kind)
    request = rpb.DeleteRequest(
        kind=kind, namespace=app.namespace(namespace), name=name
    )
    resource: pb.Resource = app.registry.call("Delete", request)
    o = as_dict(resource)
    pending = o["metadata"].get("finalizers")
    state = f"deleting (waiting for {', '.join(pending)})" if pending else "deleted"
    click.echo(f"{o['kind'].lower()}/{name} {state}")


@click.command()
@click.argument("model")
@namespace_option
@pass_app
def history(app: App, model: str, namespace: str | None) -> None:
    """List a Model's revisions."""
    revisions = app.registry.list_revisions(app.namespace(namespace), model)
    now = app.now()
    rows = [
        [
            str(r.revision),
            r.model.spec.model_spec.version or render.MISSING,
            r.model.spec.model_spec.source.uri or render.MISSING,
            r.created.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ"),
            render.age(r.created.ToJsonString(), now),
        ]
        for r in revisions
    ]
    for line in render.format_table(
        ("REVISION", "VERSION", "SOURCE", "CREATED", "AGE"), rows
    ):
        click.echo(line)


@click.command()
@click.argument("model")
@click.argument("revision", type=click.IntRange(min=1))
@namespace_option
@click.option(
    "--wait",
    is_flag=True,
    help="Then wait until every ModelInfer following MODEL serves the new revision.",
)
@wait_timeout_option
@pass_app
def rollback(
    app: App,
    model: str,
    revision: int,
    namespace: str | None,
    wait: bool,
    wait_timeout_s: float,
) -> None:
    """Make a new revision of MODEL equal to REVISION."""
    from matrixinfer.api.v1 import registry_pb2 as rpb

    ns = app.namespace(namespace)
    request = rpb.RollbackRequest(namespace=ns, name=model, revision=revision)
    resource: pb.Resource = app.registry.call("Rollback", request)
    current = resource.model.status.current_revision
    click.echo(
        f"model/{model} rolled back to revision {revision} (now revision {current})"
    )
    if not wait:
        return
    targets = _followers(app.registry, ns, model, current)
    if not targets:
        click.echo(
            f"nothing to wait for: no ModelInfer follows model/{model}", err=True
        )
        return
    from rich.console import Console

    wait_available(app.registry, targets, wait_timeout_s, Console(stderr=True))
    for t in targets:
        ready, desired = t.counts()
        click.echo(
            f"modelinfer/{t.name} available: {ready}/{desired} ready on revision "
            f"{current}"
        )


def _followers(
    registry: Registry, namespace: str, model: str, revision: int
) -> list[Target]:
    """Wait targets for the ModelInfers that follow ``model``'s latest revision."""
    items, _ = registry.list_objects("ModelInfer", namespace)
    return [
        Target(
            i.model_infer.metadata.namespace,
            i.model_infer.metadata.name,
            i.model_infer.metadata.generation,
            model_revision=revision,
        )
        for i in items
        if i.model_infer.spec.model_ref.name == model
        and not i.model_infer.spec.model_ref.revision
    ]
