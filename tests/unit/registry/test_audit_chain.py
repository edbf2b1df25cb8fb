"""The audit log's pure parts: redacted JSON Patch diffs and the hash chain."""

from __future__ import annotations

import dataclasses
import json

from matrixinfer.api.envelope import wrap
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.registry.domain import audit


def api_key(hash_: str, revoked: bool = False) -> pb.Resource:
    key = pb.ApiKey(api_version="registry.matrixinfer.ai/v1alpha1", kind="ApiKey")
    key.metadata.name = "k1"
    key.spec.subject = "ci"
    key.spec.hash = hash_
    key.spec.revoked = revoked
    return wrap(key)


def test_a_credential_change_shows_redacted_and_an_unchanged_one_not_at_all() -> None:
    rotated = json.loads(audit.diff(api_key("sha256:old"), api_key("sha256:new")))
    revoked = json.loads(audit.diff(api_key("sha256:old"), api_key("sha256:old", True)))

    assert rotated == [{"op": "replace", "path": "/spec/hash", "value": "<redacted>"}]
    assert revoked == [{"op": "add", "path": "/spec/revoked", "value": True}]


def test_fields_named_like_credentials_are_redacted_anywhere() -> None:
    value = {
        "annotations": {"db-password": "hunter2", "owner": "ml"},
        "env": [{"clientSecret": "s3cr3t", "token": "t", "maxTokens": 5}],
        "credentialsRef": "s3-prod",
        "consistentHash": {"header": "x-user"},
    }

    assert audit.redact(value) == {
        "annotations": {"db-password": "<redacted>", "owner": "ml"},
        "env": [{"clientSecret": "<redacted>", "token": "<redacted>", "maxTokens": 5}],
        "credentialsRef": "s3-prod",
        "consistentHash": {"header": "x-user"},
    }


def chain(count: int) -> list[audit.AuditEntry]:
    entries: list[audit.AuditEntry] = []
    previous = audit.GENESIS
    for seq in range(1, count + 1):
        record = audit.record("anonymous", "create", "Model", "default", f"m{seq}")
        entry = audit.seal(record, seq, audit.timestamp(), previous)
        entries.append(entry)
        previous = entry.hash
    return entries


def verify(entries: list[audit.AuditEntry], head: int) -> audit.Verification:
    verifier = audit.ChainVerifier()
    for entry in entries:
        if not verifier.feed(entry):
            break
    return verifier.finish(head)


def test_an_untouched_chain_verifies() -> None:
    assert verify(chain(5), 5) == audit.Verification(True, 5)


def test_the_first_altered_entry_is_named() -> None:
    entries = chain(5)
    entries[1] = dataclasses.replace(entries[1], result="INVALID_ARGUMENT")
    entries[3] = dataclasses.replace(entries[3], actor="mallory")

    result = verify(entries, 5)

    assert (result.intact, result.first_broken_seq) == (False, 2)
    assert result.reason == "entry 2 was altered: its hash does not match its contents"


def test_a_new_first_entry_does_not_start_the_chain() -> None:
    entries = chain(2)
    forged = audit.seal(audit.record("x", "create", "Model", "default", "m"), 1,
                        audit.timestamp(), "f" * 64)  # fmt: skip

    result = verify([forged, *entries[1:]], 2)

    assert (result.first_broken_seq, result.reason) == (
        1,
        "entry 1 was altered: it does not start the chain",
    )


def test_values_are_stored_bounded_and_without_nul() -> None:
    record = audit.record("a\x00b", "apply", "K" * 500, "ns", "n\ud800", message="m")

    assert record.actor == "a\\x00b"
    assert len(record.kind) == 64
    assert record.name == "n\\ud800"
