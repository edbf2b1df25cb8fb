"""Kubernetes label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``,
``a notin (x)``, ``a`` and ``!a``, joined by commas (all must hold)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from matrixinfer.core.errors import InvalidArgument

Selector = Callable[[Mapping[str, str]], bool]

_KEY = r"(?:[a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"\s*({_KEY})\s+(in|notin)\s+\(\s*([^()]*)\)\s*", re.ASCII)
_EQ = re.compile(rf"\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*", re.ASCII)
_EXISTS = re.compile(rf"\s*(!?)\s*({_KEY})\s*", re.ASCII)
_VALUE_RE = re.compile(_VALUE, re.ASCII)
MAX_SELECTOR_CHARS = 4096


def _split(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_selector(text: str, field: str = "labelSelector") -> Selector:
    if len(text) > MAX_SELECTOR_CHARS:
        raise InvalidArgument.field(
            field, f"longer than {MAX_SELECTOR_CHARS} characters"
        )
    if not text.strip():
        return lambda labels: True
    tests: list[Selector] = []
    for part in _split(text):
        tests.append(_requirement(part, field))
    return lambda labels: all(t(labels) for t in tests)


def _requirement(part: str, field: str) -> Selector:
    if m := _SET.fullmatch(part):
        key, op = m.group(1), m.group(4)
        values = {v.strip() for v in m.group(5).split(",") if v.strip()}
        if not values or not all(_VALUE_RE.fullmatch(v) for v in values):
            raise InvalidArgument.field(field, f"bad value list in {part.strip()!r}")
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EQ.fullmatch(part):
        key, op, value = m.group(1), m.group(4), m.group(5)
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS.fullmatch(part):
        negate, key = m.group(1) == "!", m.group(2)
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise InvalidArgument.field(field, f"cannot parse {part.strip()[:80]!r}")
