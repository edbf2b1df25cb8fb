"""What the gateway's request path needs from outside, as interfaces: the adapters
of :mod:`matrixinfer.gateway.adapters` fit them.

The API key cache the authenticator reads is
:class:`matrixinfer.gateway.domain.auth.ApiKeyStore` (beside the record it returns).
"""

from __future__ import annotations

from typing import Protocol


class Activator(Protocol):
    async def activate(self, namespace: str, model_infer: str) -> None: ...
