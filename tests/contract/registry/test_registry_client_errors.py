"""The registry client other services use keeps the registry's status: a request
the registry calls invalid is InvalidArgument to the caller, not Unavailable."""

from __future__ import annotations

import grpc
import pytest

from matrixinfer.core.errors import InvalidArgument, NotFound
from matrixinfer.core.grpc.errors import status_code_for
from matrixinfer.core.registry.client import RegistryClient
from matrixinfer.registry.main import RegistryApp


async def test_the_registry_s_codes_reach_the_caller(registry_app: RegistryApp) -> None:
    async with grpc.aio.insecure_channel(registry_app.address) as channel:
        client = RegistryClient(channel)
        with pytest.raises(InvalidArgument) as invalid:
            await client.get("NoSuchKind", "default", "x")
        assert status_code_for(invalid.value) is grpc.StatusCode.INVALID_ARGUMENT
        assert "NoSuchKind" in invalid.value.message
        assert await client.get("Model", "default", "missing") is None
        with pytest.raises(NotFound):
            await client.model_revision("default", "missing", 3)
