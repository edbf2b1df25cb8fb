"""Fetching artifacts from a real S3-compatible server (moto_server) and the local
disk: digests, caching, verification, safe unpacking."""

from __future__ import annotations

import hashlib
import io
import pathlib
import tarfile
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from matrixinfer.controller.artifacts.fetcher import ArtifactFetcher, ArtifactLimits
from matrixinfer.core.errors import FailedPrecondition, InvalidArgument
from tests.conftest import ROOT

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
    fetcher = ArtifactFetcher(tmp_path / "cache", s3_endpoint_url=endpoint)
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
    fetcher = ArtifactFetcher(tmp_path / "cache", s3_endpoint_url=endpoint)
    folder = await fetcher.fetch("s3://models/dir/")
    assert sorted(p.name for p in folder.path.iterdir()) == ["labels.txt", "model.onnx"]
    packed = await fetcher.fetch("s3://models/packed/m.tar.gz")
    assert (packed.path / "model.onnx").read_bytes() == ONNX


async def test_wrong_sha256_is_refused(
    s3: tuple[str, Any], tmp_path: pathlib.Path
) -> None:
    endpoint, client = s3
    client.put_object(Bucket="models", Key="m.onnx", Body=ONNX)
    fetcher = ArtifactFetcher(tmp_path / "cache", s3_endpoint_url=endpoint)
    with pytest.raises(InvalidArgument, match="sha256 mismatch"):
        await fetcher.fetch("s3://models/m.onnx", sha256="0" * 64)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


async def test_missing_object_and_traversal_keys(
    s3: tuple[str, Any], tmp_path: pathlib.Path
) -> None:
    endpoint, client = s3
    fetcher = ArtifactFetcher(tmp_path / "cache", s3_endpoint_url=endpoint)
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
