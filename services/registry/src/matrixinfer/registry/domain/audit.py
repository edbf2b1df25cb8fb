"""The audit log: one entry per write to the registry, and per refused write.

An entry says who (the caller's identity), when, what (action, kind, namespace,
name), the change (an RFC 6902 JSON Patch from the stored object before the write to
the object after it, credentials redacted) and the result (``ok``, or the error code
and message of a refusal). Entries of a write are appended in the write's own
transaction, so a write and its entries commit together or not at all.

Entries form a hash chain: each stores the previous entry's hash, and its own hash
is sha256 over a canonical serialization of its fields, the previous hash included.
Altering, removing or reordering entries breaks the chain at the first entry
concerned, which :class:`ChainVerifier` names.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from typing import Any

import jsonpatch
from google.protobuf import json_format

from matrixinfer.api.envelope import unwrap
from matrixinfer.api.v1 import resources_pb2 as pb
from matrixinfer.core.errors import InvalidArgument, MatrixInferError

log = logging.getLogger("matrixinfer.registry.audit")

#: The previous hash of the first entry.
GENESIS = "0" * 64
REDACTED = "<redacted>"
OK = "ok"

# A field holds a credential when its name says so: the ApiKey's ``hash``, and
# anything named like a secret, password, token or key material. References to
# credentials held elsewhere (``credentialsRef``) are names, not credentials.
_CREDENTIAL = re.compile(
    r"secret|password|passwd|passphrase|private_?key|access_?key|bearer"
    r"|credential(?!s?_?ref$)|^token$|^hash$|api_?key$",
    re.IGNORECASE,
)

_LIMITS = {
    "actor": 256,
    "action": 32,
    "kind": 64,
    "namespace": 253,
    "name": 253,
    "result": 64,
    "message": 2048,
}


@dataclass(frozen=True)
class AuditRecord:
    """What the domain asks the store to append; the store seals it into an entry."""

    actor: str
    action: str
    kind: str
    namespace: str
    name: str
    diff: str
    result: str = OK
    message: str = ""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: str
    actor: str
    action: str
    kind: str
    namespace: str
    name: str
    diff: str
    result: str
    message: str
    previous_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuditQuery:
    """Entries with ``after < seq <= through`` (``through`` 0: no bound) matching
    every non-empty filter, oldest first, at most ``limit``."""

    kind: str = ""
    namespace: str = ""
    name: str = ""
    actor: str = ""
    #: A time in :func:`timestamp`'s format: entries at or after it.
    since: str = ""
    after: int = 0
    through: int = 0
    limit: int = 500


@dataclass(frozen=True)
class Verification:
    intact: bool
    entries: int
    first_broken_seq: int = 0
    reason: str = ""


# ------------------------------------------------------------------ records


def clean(value: str, field: str) -> str:
    """A value the database stores as given: no NUL, valid UTF-8, bounded."""
    text = value.replace("\x00", "\\x00")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text[: _LIMITS[field]]


def record(
    actor: str,
    action: str,
    kind: str,
    namespace: str,
    name: str,
    diff: str = "[]",
    result: str = OK,
    message: str = "",
) -> AuditRecord:
    return AuditRecord(
        actor=clean(actor, "actor"),
        action=clean(action, "action"),
        kind=clean(kind, "kind"),
        namespace=clean(namespace, "namespace"),
        name=clean(name, "name"),
        diff=diff,
        result=clean(result, "result"),
        message=clean(message, "message"),
    )


def refusal(
    actor: str, action: str, kind: str, namespace: str, name: str, error: Exception
) -> AuditRecord:
    """The record of a write refused with ``error``: its code and message (an
    unexpected exception is INTERNAL, its text is not shown)."""
    if isinstance(error, MatrixInferError):
        code, message = error.reason, error.message
    else:
        code, message = "INTERNAL", "internal error"
    return record(actor, action, kind, namespace, name, "[]", code, message)


# ------------------------------------------------------------------ diffs


def _as_json(resource: pb.Resource | None) -> dict[str, Any]:
    if resource is None:
        return {}
    obj = unwrap(resource)
    if obj is None:
        return {}
    return json_format.MessageToDict(obj)


def is_credential(field: str) -> bool:
    return bool(_CREDENTIAL.search(field))


def redact(value: Any) -> Any:
    """``value`` with every credential field's value replaced by REDACTED."""
    if isinstance(value, dict):
        return {
            k: REDACTED if is_credential(str(k)) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _pointer_fields(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def diff(before: pb.Resource | None, after: pb.Resource | None) -> str:
    """The JSON Patch (as canonical JSON text) turning ``before`` into ``after``;
    absent objects are ``{}``. A changed credential shows as a ``replace`` with the
    value REDACTED; an unchanged one does not show."""
    ops = jsonpatch.make_patch(_as_json(before), _as_json(after)).patch
    out: list[dict[str, Any]] = []
    for op in ops:
        op = dict(op)
        if "value" in op:
            fields = _pointer_fields(str(op.get("path", "")))
            if any(is_credential(f) for f in fields):
                op["value"] = REDACTED
            else:
                op["value"] = redact(op["value"])
        out.append(op)
    return _canonical_json(out)


# ------------------------------------------------------------------ the chain


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical(
    seq: int, time: str, rec: AuditRecord | AuditEntry, previous_hash: str
) -> bytes:
    """What an entry's hash covers: every field but the hash itself."""
    return _canonical_json(
        {
            "seq": seq,
            "time": time,
            "actor": rec.actor,
            "action": rec.action,
            "kind": rec.kind,
            "namespace": rec.namespace,
            "name": rec.name,
            "diff": rec.diff,
            "result": rec.result,
            "message": rec.message,
            "previous_hash": previous_hash,
        }
    ).encode("ascii")


def entry_hash(entry: AuditEntry) -> str:
    body = canonical(entry.seq, entry.time, entry, entry.previous_hash)
    return hashlib.sha256(body).hexdigest()


def seal(rec: AuditRecord, seq: int, time: str, previous_hash: str) -> AuditEntry:
    """The entry ``rec`` becomes at position ``seq`` after ``previous_hash``."""
    body = canonical(seq, time, rec, previous_hash)
    return AuditEntry(
        seq=seq,
        time=time,
        actor=rec.actor,
        action=rec.action,
        kind=rec.kind,
        namespace=rec.namespace,
        name=rec.name,
        diff=rec.diff,
        result=rec.result,
        message=rec.message,
        previous_hash=previous_hash,
        hash=hashlib.sha256(body).hexdigest(),
    )


class ChainVerifier:
    """Feed entries in seq order; stops at the first that does not verify."""

    def __init__(self) -> None:
        self.expected = 1
        self.previous_hash = GENESIS
        self.broken: Verification | None = None

    def feed(self, entry: AuditEntry) -> bool:
        """False (and ``broken`` set) when ``entry`` breaks the chain."""
        seq = self.expected
        if entry.seq != seq:
            return self._break(seq, f"entry {seq} is missing")
        if entry.previous_hash != self.previous_hash:
            if seq == 1:
                return self._break(
                    seq, "entry 1 was altered: it does not start the chain"
                )
            return self._break(
                seq,
                f"entry {seq}'s previous hash is not entry {seq - 1}'s hash: "
                f"entry {seq - 1} or {seq} was altered",
            )
        if entry_hash(entry) != entry.hash:
            return self._break(
                seq, f"entry {seq} was altered: its hash does not match its contents"
            )
        self.expected += 1
        self.previous_hash = entry.hash
        return True

    def _break(self, seq: int, reason: str) -> bool:
        self.broken = Verification(False, self.expected - 1, seq, reason)
        return False

    def finish(self, head: int) -> Verification:
        """The result once every entry up to ``head`` (the number of entries the log
        says it holds) was fed."""
        if self.broken is not None:
            return Verification(
                False, head, self.broken.first_broken_seq, self.broken.reason
            )
        if self.expected - 1 < head:
            seq = self.expected
            return Verification(
                False, head, seq, f"entry {seq} is missing (the log has {head})"
            )
        return Verification(True, self.expected - 1)


# ------------------------------------------------------------------ time


def timestamp(at: datetime.datetime | None = None) -> str:
    """RFC 3339 in UTC with microseconds: sorts as text in time order."""
    at = at or datetime.datetime.now(datetime.UTC)
    return at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_since(value: str, field: str = "since") -> str:
    """An RFC 3339 time from a request, in :func:`timestamp`'s format."""
    if not value:
        return ""
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument.field(
            field, "must be an RFC 3339 time, e.g. 2030-01-31T00:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise InvalidArgument.field(field, "must carry a time zone (Z or +hh:mm)")
    return timestamp(parsed)


def log_entry(entry: AuditEntry) -> None:
    """The entry as a structured log line (the ``audit`` field of the JSON line)."""
    log.info(
        "audit %s %s %s/%s by %s: %s",
        entry.action,
        entry.kind,
        entry.namespace,
        entry.name,
        entry.actor,
        entry.result,
        extra={"audit": entry.as_dict()},
    )
