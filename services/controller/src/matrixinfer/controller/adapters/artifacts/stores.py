"""Object stores behind one small interface: S3 (and S3-compatible), Google Cloud
Storage and Azure Blob. Each adapter owns every call to its library and turns its
errors into ours; the fetcher does listing limits, traversal checks and digests once
for all of them. Calls are blocking and run in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from matrixinfer.core.errors import FailedPrecondition, MatrixInferError, Unavailable

T = TypeVar("T")
CHUNK_BYTES = 1 << 20


class ObjectStore(Protocol):
    scheme: str

    def list(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under ``prefix``."""

    def read(self, bucket: str, key: str) -> tuple[int | None, Iterator[bytes]]:
        """The object's size when known, and its content in chunks."""


Translate = Callable[[Exception], MatrixInferError | None]


def _guard(describe: str, call: Callable[[], T], translate: Translate) -> T:
    """Run one library call; its errors become ours (Unavailable when unknown)."""
    try:
        return call()
    except MatrixInferError:
        raise
    except Exception as e:
        ours = translate(e)
        if ours is None:
            raise Unavailable(f"{describe}: {type(e).__name__}: {e}") from e
        raise ours from e


class S3Store:
    scheme = "s3"

    def __init__(self, endpoint_url: str | None) -> None:
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            config=botocore.config.Config(
                connect_timeout=10, read_timeout=60, retries={"max_attempts": 3}
            ),
        )

    @staticmethod
    def _translate(where: str) -> Translate:
        def translate(e: Exception) -> MatrixInferError | None:
            if isinstance(e, botocore.exceptions.NoCredentialsError):
                return FailedPrecondition(
                    "no S3 credentials: give the controller AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY"
                )
            if isinstance(e, botocore.exceptions.EndpointConnectionError):
                return Unavailable(f"cannot reach the S3 endpoint for {where}")
            if isinstance(e, botocore.exceptions.ClientError):
                code = e.response.get("Error", {}).get("Code", "")
                if code in ("NoSuchKey", "NoSuchBucket", "404"):
                    return FailedPrecondition(f"{where} not found ({code})")
                if code in (
                    "AccessDenied",
                    "403",
                    "InvalidAccessKeyId",
                    "SignatureDoesNotMatch",
                ):
                    return FailedPrecondition(f"access to {where} denied ({code})")
            return None

        return translate

    def list(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        where = f"s3://{bucket}/{prefix}"
        pages = _guard(
            where,
            lambda: list(
                self._client.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=prefix
                )
            ),
            self._translate(where),
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"], int(item["Size"])

    def read(self, bucket: str, key: str) -> tuple[int | None, Iterator[bytes]]:
        where = f"s3://{bucket}/{key}"
        response = _guard(
            where,
            lambda: self._client.get_object(Bucket=bucket, Key=key),
            self._translate(where),
        )
        return response.get("ContentLength"), response["Body"].iter_chunks(CHUNK_BYTES)


class GcsStore:
    scheme = "gs"

    def __init__(self, endpoint_url: str | None) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        if endpoint_url:  # an emulator or a private endpoint: no Google credentials
            self._client = storage.Client(
                project="matrixinfer",
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": endpoint_url},
            )
        else:
            self._client = storage.Client()

    @staticmethod
    def _translate(where: str) -> Translate:
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc

        def translate(e: Exception) -> MatrixInferError | None:
            if isinstance(e, gexc.NotFound):
                return FailedPrecondition(f"{where} not found")
            if isinstance(e, gexc.Forbidden | gexc.Unauthorized):
                return FailedPrecondition(f"access to {where} denied")
            if isinstance(e, auth_exc.DefaultCredentialsError):
                return FailedPrecondition(
                    "no Google credentials: set GOOGLE_APPLICATION_CREDENTIALS for the "
                    "controller"
                )
            return None

        return translate

    def list(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        where = f"gs://{bucket}/{prefix}"
        blobs = _guard(
            where,
            lambda: list(self._client.list_blobs(bucket, prefix=prefix)),
            self._translate(where),
        )
        for blob in blobs:
            yield blob.name, int(blob.size or 0)

    def read(self, bucket: str, key: str) -> tuple[int | None, Iterator[bytes]]:
        where = f"gs://{bucket}/{key}"
        data: bytes = _guard(
            where,
            lambda: self._client.bucket(bucket).blob(key).download_as_bytes(),
            self._translate(where),
        )
        return len(data), iter(
            [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
        )


class AzureStore:
    """``az://<container>/<blob or prefix>``; the account comes from
    AZURE_STORAGE_CONNECTION_STRING, or from the endpoint (public containers)."""

    scheme = "az"

    def __init__(self, endpoint_url: str | None) -> None:
        from azure.storage.blob import BlobServiceClient

        connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if connection:
            self._client = BlobServiceClient.from_connection_string(connection)
        elif endpoint_url:
            self._client = BlobServiceClient(account_url=endpoint_url)
        else:
            raise FailedPrecondition(
                "az:// needs AZURE_STORAGE_CONNECTION_STRING for the controller, or an "
                "endpointUrl of a public account"
            )

    @staticmethod
    def _translate(where: str) -> Translate:
        from azure.core import exceptions as aexc

        def translate(e: Exception) -> MatrixInferError | None:
            if isinstance(e, aexc.ResourceNotFoundError):
                return FailedPrecondition(f"{where} not found")
            if isinstance(e, aexc.ClientAuthenticationError):
                return FailedPrecondition(f"access to {where} denied")
            if isinstance(e, aexc.ServiceRequestError):
                return Unavailable(f"cannot reach the Azure endpoint for {where}")
            return None

        return translate

    def list(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        where = f"az://{bucket}/{prefix}"
        container = self._client.get_container_client(bucket)
        blobs = _guard(
            where,
            lambda: list(container.list_blobs(name_starts_with=prefix or None)),
            self._translate(where),
        )
        for blob in blobs:
            yield blob.name, int(blob.size or 0)

    def read(self, bucket: str, key: str) -> tuple[int | None, Iterator[bytes]]:
        where = f"az://{bucket}/{key}"
        downloader: Any = _guard(
            where,
            lambda: self._client.get_blob_client(bucket, key).download_blob(),
            self._translate(where),
        )
        return int(downloader.size), downloader.chunks()


def make_store(scheme: str, endpoint_url: str | None) -> ObjectStore:
    stores: dict[str, type[S3Store] | type[GcsStore] | type[AzureStore]] = {
        "s3": S3Store,
        "gs": GcsStore,
        "az": AzureStore,
    }
    return stores[scheme](endpoint_url)
