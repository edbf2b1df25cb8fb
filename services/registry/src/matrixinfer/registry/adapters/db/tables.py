"""Table definitions, shared by the store and the Alembic migrations.

Objects are stored as their protobuf encoding (the contract's own format: fast to
read and write, and it evolves the way the contracts do); the columns beside it exist
for lookups, ordering and compare-and-set.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

resources = Table(
    "resources",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("namespace", String(63), nullable=False),
    Column("name", String(63), nullable=False),
    Column("uid", String(36), nullable=False),
    Column("resource_version", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    UniqueConstraint("kind", "namespace", "name", name="uq_resources_kind_ns_name"),
)

# One row per counter; "resource_version" hands out resourceVersions (its row lock
# orders commits), "compacted" remembers the newest event that compaction removed.
counters = Table(
    "counters",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("resource_version", BigInteger, primary_key=True, autoincrement=False),
    Column("type", String(16), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("namespace", String(63), nullable=False),
    Column("name", String(63), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_s", Float, nullable=False),
)

revisions = Table(
    "revisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uid", String(36), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("namespace", String(63), nullable=False),
    Column("name", String(63), nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_s", Float, nullable=False),
    UniqueConstraint("uid", "revision", name="uq_revisions_uid_revision"),
)

Index("ix_events_created_s", events.c.created_s)

# The audit log (domain/audit.py): append-only, a hash chain in seq order. The
# "audit" counter row holds the newest seq; its row lock serializes appends.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("time", String(32), nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", String(32), nullable=False),
    Column("kind", Text, nullable=False),
    Column("namespace", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("diff", Text, nullable=False),
    Column("result", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("previous_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

Index("ix_audit_log_object", audit_log.c.kind, audit_log.c.namespace, audit_log.c.name)
Index("ix_audit_log_actor", audit_log.c.actor)
Index("ix_audit_log_time", audit_log.c.time)
