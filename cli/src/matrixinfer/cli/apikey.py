"""``matrixinfer apikey``: create, list and revoke the keys the gateway accepts."""

from __future__ import annotations

import datetime
import json
from typing import TYPE_CHECKING

import click

from matrixinfer.cli import render
from matrixinfer.cli.client import App, as_dict
from matrixinfer.cli.resources import namespace_option

if TYPE_CHECKING:
    from matrixinfer.api.v1 import resources_pb2 as pb

pass_app = click.make_pass_decorator(App)


@click.group()
def apikey() -> None:
    """API keys for the gateway (sent as `authorization: Bearer <key>` or
    `x-api-key`)."""


def _rfc3339(value: str) -> str:
    parsed = render.parse_time(value)
    if parsed is None or "T" not in value:
        raise click.BadParameter(
            "expected an RFC 3339 time, e.g. 2030-01-31T00:00:00Z",
            param_hint="--expires",
        )
    if parsed <= datetime.datetime.now(datetime.UTC):
        raise click.BadParameter("must be in the future", param_hint="--expires")
    return value


@apikey.command()
@click.option(
    "--subject", required=True, help="Who the key is for (a user or service)."
)
@click.option(
    "--scope", "scopes", multiple=True, required=True,
    help="What it may do: infer:* (every model), infer:<model>, admin (repeatable).",
)  # fmt: skip
@click.option("--tenant", default="", help="Tenant, for per-tenant rate limits.")
@click.option("--expires", default="", help="RFC 3339 expiry time (default: never).")
@namespace_option
@click.option(
    "-o", "--output", type=click.Choice(["text", "json"]), default="text",
    show_default=True,
)  # fmt: skip
@pass_app
def create(
    app: App, subject: str, scopes: tuple[str, ...], tenant: str, expires: str,
    namespace: str | None, output: str,
) -> None:  # fmt: skip
    """Make a key. Its secret is printed once: only its hash is stored."""
    from matrixinfer.api.v1 import registry_pb2 as rpb

    request = rpb.CreateApiKeyRequest(
        namespace=app.namespace(namespace),
        subject=subject,
        scopes=list(scopes),
        tenant=tenant,
        expires_at=_rfc3339(expires) if expires else "",
    )
    response: rpb.CreateApiKeyResponse = app.registry.call("CreateApiKey", request)
    name = response.api_key.metadata.name
    if output == "json":
        click.echo(json.dumps({"name": name, "secret": response.secret}, indent=2))
    else:
        click.echo(f"apikey/{name} created")
        click.echo(f"secret: {response.secret}")
    click.echo(
        "warning: store the secret now; it is not shown again (only its hash is "
        "kept). Use it as --token or `authorization: Bearer <secret>`.",
        err=True,
    )


@apikey.command(name="list")
@namespace_option
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.option(
    "-o", "--output", type=click.Choice(["table", "wide", "json"]), default="table",
    show_default=True,
)  # fmt: skip
@pass_app
def list_keys(
    app: App, namespace: str | None, all_namespaces: bool, output: str
) -> None:
    """List keys (their secrets are never shown: they are not stored)."""
    ns = "" if all_namespaces else app.namespace(namespace)
    items, _ = app.reader.list_objects("ApiKey", ns)
    objects = [as_dict(i) for i in items]
    if output == "json":
        click.echo(render.as_json(objects, single=False))
    elif not objects:
        click.echo("No API keys found.", err=True)
    else:
        click.echo(
            render.table("ApiKey", objects, app.now(), output == "wide", all_namespaces)
        )


@apikey.command()
@click.argument("name")
@namespace_option
@pass_app
def revoke(app: App, name: str, namespace: str | None) -> None:
    """Revoke a key: every gateway refuses it within its watch latency."""
    from matrixinfer.api.v1 import registry_pb2 as rpb

    request = rpb.RevokeApiKeyRequest(namespace=app.namespace(namespace), name=name)
    resource: pb.Resource = app.registry.call("RevokeApiKey", request)
    click.echo(f"apikey/{resource.api_key.metadata.name or name} revoked")
