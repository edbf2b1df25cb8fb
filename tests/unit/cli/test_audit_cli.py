"""``matrixinfer audit`` and ``matrixinfer audit verify`` as a user runs them (a
subprocess) against a real registry (SQLite, ephemeral port)."""

from __future__ import annotations

import asyncio
import datetime
import json
import pathlib
import sys
from collections.abc import AsyncIterator

import pytest_asyncio
from sqlalchemy import text

from matrixinfer.cli.audit import since_time
from matrixinfer.core import identity
from matrixinfer.registry.main import RegistryApp
from tests.conftest import registry_settings
from tests.manifests import model
from tests.unit.cli.test_import_graph import NOT_FOR_HELP, SERVER_ONLY, loaded, under


@pytest_asyncio.fixture
async def app(tmp_path: pathlib.Path) -> AsyncIterator[RegistryApp]:
    registry = await RegistryApp.start(
        registry_settings(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    )
    try:
        with identity.acting_as(identity.Identity("key:alice")):
            await registry.service.apply(model("m", "1"), [])
            await registry.service.apply(model("m", "2"), [])
        with identity.acting_as(identity.Identity("jwt:bob")):
            await registry.service.apply(model("other"), [])
            await registry.service.create_api_key("default", "ci", ["admin"], "", "")
        yield registry
    finally:
        await registry.stop(0)


async def run(app: RegistryApp, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "matrixinfer.cli", "--server", app.address, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_audit_shows_a_table_of_every_write(app: RegistryApp) -> None:
    code, out, _ = await run(app, "audit")

    lines = [line.split() for line in out.splitlines()]
    assert code == 0
    assert lines[0] == ["TIME", "ACTOR", "ACTION", "KIND", "NAME", "RESULT"]
    assert [line[1:] for line in lines[1:4]] == [
        ["key:alice", "create", "Model", "m", "ok"],
        ["key:alice", "update", "Model", "m", "ok"],
        ["jwt:bob", "create", "Model", "other", "ok"],
    ]
    assert lines[4][1:4] == ["jwt:bob", "create-apikey", "ApiKey"]
    assert len(lines) == 5
    assert lines[1][0].endswith("Z") and len(lines[1][0]) == len("2026-01-01T00:00:00Z")


async def test_audit_filters_and_prints_json(app: RegistryApp) -> None:
    code, out, _ = await run(app, "audit", "--kind", "mo", "--name", "m", "-o", "json")

    entries = json.loads(out)
    assert code == 0
    assert [(e["seq"], e["actor"], e["action"]) for e in entries] == [
        (1, "key:alice", "create"),
        (2, "key:alice", "update"),
    ]
    assert {
        "op": "replace",
        "path": "/spec/modelSpec/version",
        "value": "2",
    } in entries[1]["diff"]
    assert entries[1]["previousHash"] == entries[0]["hash"]
    code, out, err = await run(app, "audit", "--actor", "nobody", "--since", "1h")
    assert (code, out, err.strip()) == (0, "", "No audit entries found.")


async def test_audit_verify_says_intact_then_names_the_altered_entry(
    app: RegistryApp,
) -> None:
    code, out, _ = await run(app, "audit", "verify")
    assert (code, out.strip()) == (0, "chain intact, 4 entries")

    async with app.store.engine.begin() as conn:
        await conn.execute(text("UPDATE audit_log SET name = 'x' WHERE seq = 3"))
    code, out, err = await run(app, "audit", "verify")

    assert (code, out) == (1, "")
    assert err.strip() == (
        "audit log broken at entry 3 (of 4): entry 3 was altered: its hash does not "
        "match its contents"
    )


def test_since_takes_a_duration_ago_or_a_time_as_given() -> None:
    now = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)

    assert since_time("90m", now) == "2026-12-02T10:30:00Z"
    assert since_time("2d", now) == "2026-11-30T12:00:00Z"
    assert since_time("2026-01-01T00:00:00Z", now) == "2026-01-01T00:00:00Z"


def test_audit_help_loads_no_heavy_library(tmp_path: pathlib.Path) -> None:
    for args in (("audit", "--help"), ("audit", "verify", "--help")):
        code, modules = loaded(tmp_path, *args)
        assert (code, under(modules, NOT_FOR_HELP + SERVER_ONLY)) == (0, [])
