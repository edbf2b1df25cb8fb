"""Database errors reach clients as our errors, never as library exceptions."""

from __future__ import annotations

import psycopg
from sqlalchemy.exc import DBAPIError, OperationalError

from matrixinfer.core.errors import InvalidArgument, Unavailable
from matrixinfer.registry.adapters.db.store import _translate


def test_lost_database_is_unavailable() -> None:
    error = OperationalError(
        "SELECT 1", {}, psycopg.OperationalError("connection refused")
    )
    translated = _translate(error)
    assert isinstance(translated, Unavailable)
    assert "SELECT" not in translated.message


def test_refused_value_is_invalid_argument_without_sql() -> None:
    error = DBAPIError("INSERT ...", {"secret": "x"}, psycopg.DataError("NUL byte"))
    translated = _translate(error)
    assert isinstance(translated, InvalidArgument)
    assert "INSERT" not in translated.message and "secret" not in translated.message
