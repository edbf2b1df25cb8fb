"""Timestamps as the API writes them: RFC 3339 in UTC with a ``Z`` suffix."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal


def now_rfc3339(timespec: Literal["seconds", "milliseconds"] = "seconds") -> str:
    """The current UTC time, e.g. ``2025-02-28T12:00:00Z`` or, with
    ``timespec="milliseconds"``, ``2025-02-28T12:00:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
