"""``matrixinfer audit``: the registry's audit log (who wrote what, when, and what
was refused), and ``audit verify``, the check of its hash chain."""

from __future__ import annotations

import datetime
import json
import re
from typing import TYPE_CHECKING, Any

import click

from matrixinfer.cli import render
from matrixinfer.cli.client import App, CliError
from matrixinfer.cli.kinds import resolve_kind

if TYPE_CHECKING:
    from matrixinfer.api.v1 import registry_pb2 as rpb

pass_app = click.make_pass_decorator(App)

_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def since_time(value: str, now: datetime.datetime) -> str:
    """``--since``: a duration ago (30m, 2h, 7d) or an RFC 3339 time, as given."""
    match = _DURATION.fullmatch(value)
    if match is None:
        return value
    ago = datetime.timedelta(**{_UNITS[match[2]]: int(match[1])})
    return (now - ago).astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def entry_dict(entry: rpb.AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "time": entry.time,
        "actor": entry.actor,
        "action": entry.action,
        "kind": entry.kind,
        "namespace": entry.namespace,
        "name": entry.name,
        "diff": json.loads(entry.diff) if entry.diff else [],
        "result": entry.result,
        "message": entry.message,
        "previousHash": entry.previous_hash,
        "hash": entry.hash,
    }


def _short_time(value: str) -> str:
    """2026-12-02T07:33:00.123456Z → 2026-12-02T07:33:00Z."""
    return value[:19] + "Z" if len(value) >= 19 else value


@click.group(invoke_without_command=True)
@click.option("--kind", default="", help="Only this kind (Model, models, mi, ...).")
@click.option("--name", default="", help="Only objects of this name.")
@click.option(
    "-n", "--namespace", default="", help="Only this namespace [default: all]."
)
@click.option("--actor", default="", help="Only this caller (e.g. key:<id>).")
@click.option(
    "--since", default="",
    help="Only entries since an RFC 3339 time or a duration ago (30m, 2h, 7d).",
)  # fmt: skip
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table",
    show_default=True,
)  # fmt: skip
@click.pass_context
def audit(
    ctx: click.Context, kind: str, name: str, namespace: str, actor: str,
    since: str, output: str,
) -> None:  # fmt: skip
    """Who changed what, when: every write to the registry and every refused one,
    oldest first. `matrixinfer audit verify` checks the log's hash chain."""
    if ctx.invoked_subcommand is not None:
        return
    from matrixinfer.api.v1 import registry_pb2 as rpb

    app = ctx.find_object(App)
    assert app is not None
    request = rpb.ListAuditEntriesRequest(
        kind=resolve_kind(kind) if kind else "",
        namespace=namespace,
        name=name,
        actor=actor,
        since=since_time(since, app.now()) if since else "",
    )
    entries: list[rpb.AuditEntry] = []
    while True:
        page: rpb.ListAuditEntriesResponse = app.registry.call(
            "ListAuditEntries", request
        )
        entries.extend(page.entries)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    if output == "json":
        click.echo(json.dumps([entry_dict(e) for e in entries], indent=2))
        return
    if not entries:
        click.echo("No audit entries found.", err=True)
        return
    header = ["TIME", "ACTOR", "ACTION", "KIND", "NAME", "RESULT"]
    rows = [
        [
            _short_time(e.time),
            e.actor,
            e.action,
            e.kind or "-",
            e.name or "-",
            e.result,
        ]
        for e in entries
    ]
    click.echo("\n".join(render.format_table(header, rows)))


@audit.command()
@pass_app
def verify(app: App) -> None:
    """Walk the audit log's hash chain: exit 0 when intact, 1 naming the first
    entry that was altered or is missing."""
    from matrixinfer.api.v1 import registry_pb2 as rpb

    result: rpb.VerifyAuditLogResponse = app.registry.call(
        "VerifyAuditLog", rpb.VerifyAuditLogRequest()
    )
    if not result.intact:
        raise CliError(
            f"audit log broken at entry {result.first_broken_seq} "
            f"(of {result.entries}): {result.reason}"
        )
    click.echo(f"chain intact, {result.entries} entries")
