"""REST fuzzing (schemathesis) of every operation /openapi.json documents, against a
real gateway with auth on in front of a real registry: no 5xx, ever, and answers
to valid requests that conform to the document.

Garbage the fuzzer manages to store stays in this test's own platform (a fresh
SQLite registry per test), so it cannot leak into other tests.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import Counter
from typing import Any

import aiohttp
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from matrixinfer.api.v1 import registry_pb2 as rpb
from matrixinfer.httpapi.openapi import routes_documented
from tests.integration.conftest import (
    Platform,
    iris_manifests,
    start_gateway,
    wait_routed,
)
from tests.integration.gateway.test_admin_rest import wait_for_keys
from tests.manifests import MODEL

#: Examples per operation and generation mode (about 900 requests, under a minute);
#: MATRIXINFER_FUZZ_EXAMPLES=500 digs deeper by hand.
EXAMPLES = int(os.environ.get("MATRIXINFER_FUZZ_EXAMPLES", "15"))
POSITIVE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
]
# Invalid requests (wrong types, missing fields, odd paths) may meet aiohttp's own
# plain-text 404/405 before any handler: only the status class is checked there.
NEGATIVE_CHECKS = [not_a_server_error]
# Random kinds and names mostly meet 400 and 404: a third run pins these path
# parameters to objects that exist (and a served model: iris on a real Triton), so
# successful responses of every shape are checked against the document too.
PINNED = {
    "namespace": "default",
    "kind": "models",
    "name": "demo",
    "model": "iris",
    "version": "1",
}
# ... and a valid infer body for iris, so InferResponse is checked as well.
PINNED_INFER_BODY = {
    "inputs": [
        {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [6.7, 3, 5.2, 2.3]}
    ]
}
_PLACEHOLDER = re.compile(r"\{([^}]+)\}")


class Fuzz:
    """Runs in a worker thread: schemathesis calls with blocking requests while the
    gateway serves on the test's event loop."""

    def __init__(self, doc: dict[str, Any], base_url: str, key: str) -> None:
        self.operations: list[Any] = []
        for result in schemathesis.openapi.from_dict(doc).get_all_operations():
            assert isinstance(result, Ok), result  # the document loads whole
            self.operations.append(result.ok())
        self.base_url = base_url
        self.key = key
        self.cases: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.no_negative: list[str] = []

    def run(self) -> None:
        for operation in self.operations:
            self.operation(operation, GenerationMode.POSITIVE, POSITIVE_CHECKS)
            self.operation(operation, GenerationMode.NEGATIVE, NEGATIVE_CHECKS)

    def pinned(self) -> list[tuple[Any, dict[str, str]]]:
        out = []
        for operation in self.operations:
            names = set(_PLACEHOLDER.findall(operation.path))
            if names and names <= PINNED.keys():
                out.append((operation, {name: PINNED[name] for name in names}))
        return out

    def pinned_run(self, operation: Any, path_parameters: dict[str, str]) -> None:
        body = PINNED_INFER_BODY if operation.path.endswith("/infer") else None
        self.operation(
            operation, GenerationMode.POSITIVE, POSITIVE_CHECKS, path_parameters, body
        )

    def operation(
        self,
        operation: Any,
        mode: GenerationMode,
        checks: list[Any],
        path_parameters: dict[str, str] | None = None,
        body: Any = None,
    ) -> None:
        label = (
            f"{operation.label} ({mode.value}{', pinned' if path_parameters else ''})"
        )
        extra = {} if body is None else {"body": body, "media_type": "application/json"}
        strategy = operation.as_strategy(
            generation_mode=mode, path_parameters=path_parameters, **extra
        )

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Case[Any]) -> None:
            # The fuzzer's own credential headers would make ours ambiguous.
            for name in ("authorization", "x-api-key"):
                if case.headers is not None and name in case.headers:
                    del case.headers[name]
            response = case.call(
                base_url=self.base_url, headers={"x-api-key": self.key}, timeout=30
            )
            self.cases[label] += 1
            self.statuses[response.status_code] += 1
            if os.environ.get("MATRIXINFER_FUZZ_VERBOSE"):
                print(label, response.status_code, response.text[:200])
            try:
                case.validate_response(response, checks=checks)
            except AssertionError as e:  # FailureGroup: one report per case
                self.failures.append(f"{label}: {e}")

        try:
            run()
        except Unsatisfiable:
            # Nothing to make invalid: no parameters and no body (/healthz).
            assert mode is GenerationMode.NEGATIVE, label
            self.no_negative.append(label)


@pytest.mark.timeout(300)
async def test_fuzz_every_documented_operation(platform: Platform) -> None:
    app = await start_gateway(
        platform, auth_mode="required", admin_watch_max_s=0.2, admin_timeout_s=5.0
    )
    try:
        created = await platform.stub.CreateApiKey(
            rpb.CreateApiKeyRequest(subject="fuzz", scopes=["admin", "infer:*"])
        )
        await platform.apply(MODEL.format(name="demo", version="1", tier="gold"))
        await platform.apply(iris_manifests())  # Triton starts while fuzzing runs
        await wait_for_keys(app, created.api_key.metadata.name)
        async with aiohttp.ClientSession() as session:
            async with session.get(app.http_url + "/openapi.json") as response:
                doc = await response.json()
        fuzz = Fuzz(doc, app.http_url, created.secret)
        await asyncio.to_thread(fuzz.run)
        await platform.wait_for(
            lambda i: i is not None and i.status.ready_replicas == 1
        )
        await wait_routed(app)
        for operation, path_parameters in fuzz.pinned():
            # Back as it was, whatever the previous run did to it (Delete).
            await platform.apply(MODEL.format(name="demo", version="1", tier="gold"))
            await asyncio.to_thread(fuzz.pinned_run, operation, path_parameters)
    finally:
        await app.stop(0)
    statuses = sorted(fuzz.statuses.items())
    print(
        f"schemathesis: {sum(fuzz.cases.values())} cases in {len(fuzz.cases)} runs, "
        f"statuses {statuses}, {len(fuzz.failures)} failures"
    )
    # Every documented operation ran, in both modes where it has inputs to spoil.
    runs = {label.rsplit(" (", 1)[0] for label in fuzz.cases}
    assert len(runs) == len(routes_documented(doc)), sorted(runs)
    assert not fuzz.failures, "\n\n".join(fuzz.failures[:10])
    assert all(status < 500 for status in fuzz.statuses)
