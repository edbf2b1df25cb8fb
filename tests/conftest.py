"""Fixtures shared by every tier: databases (SQLite and real PostgreSQL) and an
in-process registry on an ephemeral port."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import pathlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import psycopg
import pytest
import pytest_asyncio

from matrixinfer.api.v1 import registry_pb2_grpc
from matrixinfer.registry.main import RegistryApp
from matrixinfer.registry.settings import RegistrySettings

PG_ENV = "MATRIXINFER_TEST_DATABASE_URL"
ROOT = pathlib.Path(__file__).resolve().parent.parent


def postgres_url_or_skip() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(
            f"PostgreSQL tests need {PG_ENV} (CI sets it; e.g. "
            "postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        )
    return url


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A fresh schema on the real PostgreSQL, dropped afterwards."""
    base = postgres_url_or_skip()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    plain = base.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/registry.db"
    url: str = request.getfixturevalue("pg_schema_url")
    return url


def registry_settings(database_url: str, **overrides: object) -> RegistrySettings:
    values: dict[str, object] = {
        "database_url": database_url,
        "grpc_port": 0,
        "kube_port": 0,
        "log_json": False,
        "grace_period_s": 0.5,
        "watch_poll_interval_s": 0.5,
        "bookmark_interval_s": 0.5,
    }
    values.update(overrides)
    return RegistrySettings(**values)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def registry_app(database_url: str) -> AsyncIterator[RegistryApp]:
    app = await RegistryApp.start(registry_settings(database_url))
    try:
        yield app
    finally:
        await app.stop(0)


@pytest_asyncio.fixture
async def registry(
    registry_app: RegistryApp,
) -> AsyncIterator[registry_pb2_grpc.RegistryStub]:
    async with grpc.aio.insecure_channel(
        registry_app.address, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        yield registry_pb2_grpc.RegistryStub(channel)


def seed_manifest() -> str:
    """The example manifest of the original architecture document, unchanged (the
    copy in examples/: a user's clone has nothing beside it)."""
    return (ROOT / "examples/manifests/seed-model.yaml").read_text()


@contextlib.contextmanager
def http_files(directory: pathlib.Path) -> Iterator[tuple[str, list[str]]]:
    """A plain HTTP server on 127.0.0.1 (a thread of this process) serving the files
    of ``directory``; yields its base URL and the paths it was asked for, in order."""
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass  # the test asserts on ``requested``; no access log on stderr

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
