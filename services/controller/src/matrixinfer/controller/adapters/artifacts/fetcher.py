"""Fetching model artifacts into a local cache keyed by content digest.

A source is one object (a model file or an archive) or a folder / key prefix (a
trailing ``/``). One object is verified against the Model's sha256 when given, and
its digest names the cache entry, so a second fetch of known content costs nothing.
Every failure is an error a user can act on: it ends up in the ModelInfer's Degraded
condition.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import pathlib
import shutil
import socket
import tempfile
import urllib.parse
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from matrixinfer.controller.adapters.artifacts.extract import extract, is_archive
from matrixinfer.controller.adapters.artifacts.stores import ObjectStore, make_store
from matrixinfer.controller.domain.artifacts import Artifact
from matrixinfer.core.errors import FailedPrecondition, InvalidArgument, Unavailable

log = logging.getLogger(__name__)
_COMPLETE = ".complete"
_METADATA_HOSTS = ("metadata.google.internal", "metadata", "instance-data")


@dataclass(frozen=True)
class ArtifactLimits:
    max_bytes: int = 2 << 30
    max_members: int = 10_000
    #: Allow sources (or S3 endpoints) on link-local / cloud metadata addresses.
    allow_link_local: bool = False
    timeout_s: float = 300.0


def _forbidden_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved


def check_host(host: str, limits: ArtifactLimits) -> None:
    if limits.allow_link_local:
        return
    if host.lower().rstrip(".") in _METADATA_HOSTS:
        raise InvalidArgument(f"{host}: cloud metadata hosts are not allowed")
    try:
        if _forbidden_address(host):
            raise InvalidArgument(
                f"{host}: link-local and metadata addresses are not allowed"
            )
    except ValueError:
        return  # a name: checked again when it resolves


class _SafeResolver(AbstractResolver):
    """Resolves like aiohttp, then refuses link-local results (DNS rebinding to
    169.254.169.254 is the classic SSRF path)."""

    def __init__(self, limits: ArtifactLimits) -> None:
        self._inner = DefaultResolver()
        self._limits = limits

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._limits.allow_link_local:
            for result in results:
                if _forbidden_address(result["host"]):
                    raise aiohttp.ClientConnectorError(
                        aiohttp.client_reqrep.ConnectionKey(
                            host, port, False, True, None, None, None
                        ),
                        OSError(f"{host} resolves to a link-local address"),
                    )
        return results

    async def close(self) -> None:
        await self._inner.close()


class ArtifactFetcher:
    def __init__(
        self,
        cache_dir: pathlib.Path,
        limits: ArtifactLimits | None = None,
        endpoints: dict[str, str] | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.limits = limits or ArtifactLimits()
        #: Default endpoint per scheme ("s3", "gs", "az") for S3-compatible stores,
        #: emulators and sovereign clouds; a Model's endpointUrl wins.
        self.endpoints = dict(endpoints or {})
        self._locks: dict[str, asyncio.Lock] = {}

    async def fetch(
        self, uri: str, sha256: str = "", endpoint_url: str = ""
    ) -> Artifact:
        """The artifact's content in the cache (downloaded and unpacked if needed)."""
        if sha256:
            cached = self._cached(sha256)
            if cached is not None:
                return cached
        lock = self._locks.setdefault(f"{uri}#{sha256}", asyncio.Lock())
        async with lock:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            staging = pathlib.Path(
                tempfile.mkdtemp(prefix=".fetch-", dir=self.cache_dir)
            )
            try:
                digest = await self._download(uri, staging / "raw", endpoint_url)
                if sha256 and digest is not None and digest != sha256:
                    raise InvalidArgument(
                        f"sha256 mismatch for {uri}: the Model says {sha256}, the "
                        f"artifact is {digest}"
                    )
                content = staging / "content"
                raw = staging / "raw"
                name = pathlib.PurePosixPath(urllib.parse.urlsplit(uri).path).name
                if raw.is_file() and is_archive(name):
                    extract(
                        raw,
                        name,
                        content,
                        self.limits.max_bytes,
                        self.limits.max_members,
                    )
                elif raw.is_file():
                    content.mkdir()
                    raw.rename(content / (name or "model"))
                else:
                    raw.rename(content)
                if digest is None:
                    digest = _tree_digest(content)
                return self._commit(content, digest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def _cached(self, digest: str) -> Artifact | None:
        entry = self.cache_dir / digest
        if (entry / _COMPLETE).exists():
            return Artifact(digest, entry / "content")
        return None

    def _commit(self, content: pathlib.Path, digest: str) -> Artifact:
        cached = self._cached(digest)
        if cached is not None:
            return cached
        entry = self.cache_dir / digest
        shutil.rmtree(entry, ignore_errors=True)
        entry.mkdir()
        content.rename(entry / "content")
        (entry / _COMPLETE).touch()
        return Artifact(digest, entry / "content")

    async def _download(
        self, uri: str, dest: pathlib.Path, endpoint_url: str
    ) -> str | None:
        """Download to ``dest``; the sha256 of a single object, None for a folder."""
        parsed = urllib.parse.urlsplit(uri)
        if parsed.scheme == "file":
            return await asyncio.to_thread(
                self._copy_local, pathlib.Path(parsed.path), dest
            )
        if parsed.scheme in ("s3", "gs", "az"):
            return await asyncio.to_thread(
                self._download_store,
                parsed.scheme,
                parsed.netloc,
                parsed.path.lstrip("/"),
                dest,
                endpoint_url,
            )
        if parsed.scheme in ("http", "https"):
            return await self._download_http(uri, dest)
        raise FailedPrecondition(
            f"{parsed.scheme}:// artifacts are not supported; use file://, s3://, "
            "gs://, az:// or http(s)://"
        )

    def _copy_local(self, source: pathlib.Path, dest: pathlib.Path) -> str | None:
        if not source.exists():
            raise FailedPrecondition(
                f"artifact {source} does not exist on the controller's host"
            )
        if source.is_dir():
            total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
            if total > self.limits.max_bytes:
                raise InvalidArgument(
                    f"artifact folder larger than {self.limits.max_bytes} bytes"
                )
            shutil.copytree(source, dest, symlinks=False)
            return None
        if source.stat().st_size > self.limits.max_bytes:
            raise InvalidArgument(f"artifact larger than {self.limits.max_bytes} bytes")
        digest = hashlib.sha256()
        with source.open("rb") as inp, dest.open("wb") as out:
            while chunk := inp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        return digest.hexdigest()

    def _download_store(
        self, scheme: str, bucket: str, key: str, dest: pathlib.Path, endpoint_url: str
    ) -> str | None:
        endpoint = endpoint_url or self.endpoints.get(scheme) or None
        if endpoint:
            check_host(urllib.parse.urlsplit(endpoint).hostname or "", self.limits)
        store = make_store(scheme, endpoint)
        where = f"{scheme}://{bucket}/{key}"
        if key and not key.endswith("/"):
            return self._read_object(store, bucket, key, dest, where)
        dest.mkdir(parents=True)
        total = count = 0
        for object_key, size in store.list(bucket, key):
            relative = object_key[len(key) :]
            if not relative or relative.endswith("/"):
                continue
            parts = pathlib.PurePosixPath(relative).parts
            if ".." in parts or relative.startswith("/") or "\\" in relative:
                raise InvalidArgument(
                    f"object key {object_key!r} would escape the model folder"
                )
            total += size
            count += 1
            if total > self.limits.max_bytes or count > self.limits.max_members:
                raise InvalidArgument(f"{where} exceeds the controller's size limits")
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            self._read_object(
                store, bucket, object_key, target, f"{scheme}://{bucket}/{object_key}"
            )
        if count == 0:
            raise FailedPrecondition(f"{where} holds no objects")
        return None

    def _read_object(
        self, store: ObjectStore, bucket: str, key: str, dest: pathlib.Path, where: str
    ) -> str:
        size_hint, chunks = store.read(bucket, key)
        if size_hint is not None and size_hint > self.limits.max_bytes:
            raise InvalidArgument(f"{where} is over {self.limits.max_bytes} bytes")
        digest = hashlib.sha256()
        size = 0
        with dest.open("wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > self.limits.max_bytes:
                    raise InvalidArgument(
                        f"{where} is over {self.limits.max_bytes} bytes"
                    )
                digest.update(chunk)
                out.write(chunk)
        return digest.hexdigest()

    async def _download_http(self, uri: str, dest: pathlib.Path) -> str:
        check_host(urllib.parse.urlsplit(uri).hostname or "", self.limits)
        timeout = aiohttp.ClientTimeout(total=self.limits.timeout_s)
        connector = aiohttp.TCPConnector(resolver=_SafeResolver(self.limits))
        digest = hashlib.sha256()
        size = 0
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
                session.get(uri, allow_redirects=False) as response,
            ):
                if response.status != 200:
                    raise FailedPrecondition(
                        f"GET {uri} answered HTTP {response.status}"
                    )
                with dest.open("wb") as out:
                    async for chunk in response.content.iter_chunked(1 << 20):
                        size += len(chunk)
                        if size > self.limits.max_bytes:
                            raise InvalidArgument(
                                f"{uri} is larger than {self.limits.max_bytes} bytes"
                            )
                        digest.update(chunk)
                        out.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise Unavailable(f"cannot download {uri}: {e}") from e
        return digest.hexdigest()


def _tree_digest(root: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


__all__ = ["Artifact", "ArtifactFetcher", "ArtifactLimits", "check_host"]
