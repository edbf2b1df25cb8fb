"""Fetching artifacts from real servers — S3-compatible (moto_server), GCS
(gcp-storage-emulator), Azure Blob (Azurite), plain HTTP (Python's http.server) —
and the local disk: digests, caching, verification, safe unpacking."""

from __future__ import annotations

import contextlib
import hashlib
import io
import pathlib
import socket
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from azure.storage.blob import BlobServiceClient
from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from moto.server import ThreadedMotoServer

from matrixinfer.controller.adapters.artifacts.fetcher import (
    ArtifactFetcher,
    ArtifactLimits,
)
from matrixinfer.core.errors import FailedPrecondition, InvalidArgument
from tests.conftest import ROOT, http_files

ONNX = (ROOT / "examples/iris/model.onnx").read_bytes()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="models")
        yield endpoint, client
    finally:
        server.stop()


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


async def test_s3_object_is_fetched_verified_and_cached(
    s3: tuple[str, Any], tmp_path: pathlib.Path
) -> None:
    endpoint, client = s3
    client.put_object(Bucket="models", Key="iris/1/model.onnx", Body=ONNX)
    fetcher = ArtifactFetcher(tmp_path / "cache", endpoints={"s3": endpoint})
    digest = hashlib.sha256(ONNX).hexdigest()
    artifact = await fetcher.fetch("s3://models/iris/1/model.onnx", sha256=digest)
    assert artifact.digest == digest
    model = artifact.find(".onnx")
    assert model is not None and model.read_bytes() == ONNX
    # Known content is served from the cache without asking S3.
    client.delete_object(Bucket="models", Key="iris/1/model.onnx")
    again = await fetcher.fetch("s3://models/iris/1/model.onnx", sha256=digest)
    assert again.path == artifact.path


async def test_s3_prefix_and_archive(
    s3: tuple[str, Any], tmp_path: pathlib.Path
) -> None:
    endpoint, client = s3
    client.put_object(Bucket="models", Key="dir/model.onnx", Body=ONNX)
    client.put_object(Bucket="models", Key="dir/labels.txt", Body=b"setosa\n")
    client.put_object(
        Bucket="models", Key="packed/m.tar.gz", Body=tar_gz({"model.onnx": ONNX})
    )
    fetcher = ArtifactFetcher(tmp_path / "cache", endpoints={"s3": endpoint})
    folder = await fetcher.fetch("s3://models/dir/")
    assert sorted(p.name for p in folder.path.iterdir()) == ["labels.txt", "model.onnx"]
    packed = await fetcher.fetch("s3://models/packed/m.tar.gz")
    assert (packed.path / "model.onnx").read_bytes() == ONNX


async def test_wrong_sha256_is_refused(
    s3: tuple[str, Any], tmp_path: pathlib.Path
) -> None:
    endpoint, client = s3
    client.put_object(Bucket="models", Key="m.onnx", Body=ONNX)
    fetcher = ArtifactFetcher(tmp_path / "cache", endpoints={"s3": endpoint})
    with pytest.raises(InvalidArgument, match="sha256 mismatch"):
        await fetcher.fetch("s3://models/m.onnx", sha256="0" * 64)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


async def test_missing_object_and_traversal_keys(
    s3: tuple[str, Any], tmp_path: pathlib.Path
) -> None:
    endpoint, client = s3
    fetcher = ArtifactFetcher(tmp_path / "cache", endpoints={"s3": endpoint})
    with pytest.raises(FailedPrecondition, match="not found"):
        await fetcher.fetch("s3://models/nope.onnx")
    client.put_object(Bucket="models", Key="evil/../../escape.onnx", Body=ONNX)
    with pytest.raises(InvalidArgument, match="escape"):
        await fetcher.fetch("s3://models/evil/")


@pytest.mark.parametrize(
    "archive",
    [
        tar_gz({"../outside.onnx": ONNX}),
        tar_gz({"/abs.onnx": ONNX}),
        tar_gz({"model.onnx": ONNX}, links={"link": "/etc/passwd"}),
        tar_gz({"model.onnx": b"x" * 5000}),  # over the 4 KiB limit below
    ],
)
async def test_hostile_archives_are_refused(
    archive: bytes, tmp_path: pathlib.Path
) -> None:
    source = tmp_path / "model.tar.gz"
    source.write_bytes(archive)
    fetcher = ArtifactFetcher(tmp_path / "cache", ArtifactLimits(max_bytes=4096))
    with pytest.raises(InvalidArgument):
        await fetcher.fetch(f"file://{source}")
    assert not (tmp_path / "outside.onnx").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


async def test_zip_slip_is_refused(tmp_path: pathlib.Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("../../evil.onnx", ONNX)
    source = tmp_path / "model.zip"
    source.write_bytes(buffer.getvalue())
    fetcher = ArtifactFetcher(tmp_path / "cache")
    with pytest.raises(InvalidArgument, match="escape"):
        await fetcher.fetch(f"file://{source}")


async def test_local_file_and_missing_path(tmp_path: pathlib.Path) -> None:
    fetcher = ArtifactFetcher(tmp_path / "cache")
    artifact = await fetcher.fetch(f"file://{ROOT / 'examples/iris/model.onnx'}")
    assert artifact.digest == hashlib.sha256(ONNX).hexdigest()
    with pytest.raises(FailedPrecondition, match="does not exist"):
        await fetcher.fetch(f"file://{tmp_path / 'nope.onnx'}")


@pytest.mark.parametrize(
    "uri",
    ["http://169.254.169.254/latest/meta-data", "http://metadata.google.internal/x"],
)
async def test_metadata_addresses_are_refused(uri: str, tmp_path: pathlib.Path) -> None:
    fetcher = ArtifactFetcher(tmp_path / "cache")
    with pytest.raises(InvalidArgument, match="not allowed"):
        await fetcher.fetch(uri)


@pytest.fixture
def iris_over_http() -> Iterator[tuple[str, list[str]]]:
    """examples/iris over plain HTTP on 127.0.0.1, and the paths asked for. Loopback
    needs no setting: the SSRF guard refuses link-local and cloud metadata
    addresses (and names resolving to them), not private or loopback ones."""
    with http_files(ROOT / "examples/iris") as served:
        yield served


async def test_http_object_is_fetched_verified_and_cached(
    iris_over_http: tuple[str, list[str]], tmp_path: pathlib.Path
) -> None:
    base, requested = iris_over_http
    uri = f"{base}/model.onnx"
    digest = hashlib.sha256(ONNX).hexdigest()
    fetcher = ArtifactFetcher(tmp_path / "cache")
    artifact = await fetcher.fetch(uri, sha256=digest)
    assert artifact.digest == digest
    assert (artifact.path / "model.onnx").read_bytes() == ONNX
    assert requested == ["/model.onnx"]
    # Known content is served from the cache without a second download.
    again = await fetcher.fetch(uri, sha256=digest)
    assert again.path == artifact.path
    assert requested == ["/model.onnx"]


async def test_http_object_with_a_wrong_sha256_is_refused(
    iris_over_http: tuple[str, list[str]], tmp_path: pathlib.Path
) -> None:
    base, requested = iris_over_http
    uri = f"{base}/model.onnx"
    wrong = hashlib.sha256(b"some other model").hexdigest()
    actual = hashlib.sha256(ONNX).hexdigest()
    fetcher = ArtifactFetcher(tmp_path / "cache")
    with pytest.raises(InvalidArgument) as refused:
        await fetcher.fetch(uri, sha256=wrong)
    assert refused.value.message == (
        f"sha256 mismatch for {uri}: the Model says {wrong}, the artifact is {actual}"
    )
    assert requested == ["/model.onnx"]  # downloaded, then refused
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # nothing kept
    with pytest.raises(FailedPrecondition) as missing:
        await fetcher.fetch(f"{base}/missing.onnx")
    assert missing.value.message == f"GET {base}/missing.onnx answered HTTP 404"


@pytest.fixture
def gcs() -> Iterator[str]:
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket="models")
    server.start()
    try:
        yield f"http://127.0.0.1:{server._api._httpd.server_port}"
    finally:
        server.stop()


async def test_gcs_object_and_prefix(gcs: str, tmp_path: pathlib.Path) -> None:
    client = storage.Client(
        project="test",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": gcs},
    )
    client.bucket("models").blob("iris/model.onnx").upload_from_string(ONNX)
    client.bucket("models").blob("iris/README").upload_from_string(b"iris")
    fetcher = ArtifactFetcher(tmp_path / "cache", endpoints={"gs": gcs})
    single = await fetcher.fetch(
        "gs://models/iris/model.onnx", sha256=hashlib.sha256(ONNX).hexdigest()
    )
    assert (single.path / "model.onnx").read_bytes() == ONNX
    folder = await fetcher.fetch("gs://models/iris/")
    assert sorted(p.name for p in folder.path.iterdir()) == ["README", "model.onnx"]
    with pytest.raises(FailedPrecondition, match="not found"):
        await fetcher.fetch("gs://models/missing.onnx")


#: Installed by `make test-tools` (which `make test` runs before pytest), so under
#: `make test` it is always there; a run without it fails and says how to get it.
AZURITE = ROOT / ".tools/azurite/node_modules/.bin/azurite-blob"
# Azurite's published development account (the same in every Azurite install).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
    "K1SZFPTOtr/KBHBeksoGMGw=="
)


@pytest.fixture
def azurite(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if not AZURITE.exists():
        pytest.fail(
            f"Azurite (the Azure Blob emulator) is not installed at {AZURITE}: "
            "run `make test-tools` (`make test` runs it before pytest)",
            pytrace=False,
        )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "azurite.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port),
             "--silent", "--skipApiVersionCheck", "--inMemoryPersistence"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), 1),
            ):
                break
            assert process.poll() is None and time.monotonic() < deadline, (
                f"Azurite did not start: {log.read_text(errors='replace')[-2000:]}"
            )
            time.sleep(0.1)
        connection = (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
        yield connection
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_azure_blob_and_prefix(azurite: str, tmp_path: pathlib.Path) -> None:
    service = BlobServiceClient.from_connection_string(azurite)
    container = service.create_container("models")
    container.upload_blob("iris/model.onnx", ONNX)
    container.upload_blob("iris/labels.txt", b"setosa")
    fetcher = ArtifactFetcher(tmp_path / "cache")
    digest = hashlib.sha256(ONNX).hexdigest()
    with pytest.raises(InvalidArgument, match="sha256 mismatch"):
        await fetcher.fetch("az://models/iris/model.onnx", sha256="0" * 64)
    single = await fetcher.fetch("az://models/iris/model.onnx", sha256=digest)
    assert single.digest == digest
    assert (single.path / "model.onnx").read_bytes() == ONNX
    folder = await fetcher.fetch("az://models/iris/")
    assert sorted(p.name for p in folder.path.iterdir()) == ["labels.txt", "model.onnx"]
    with pytest.raises(FailedPrecondition, match="not found"):
        await fetcher.fetch("az://models/nope.onnx")
