"""The metric selectors in PromQL expressions, and the expressions of our alerting
rules and Grafana dashboards: what tests/unit/test_alert_rules.py and
tests/integration/test_alert_metrics.py check.

A small tokenizer, not a PromQL parser: it knows strings, label matchers, range and
subquery brackets, numbers and durations, keywords, function calls, the label lists
of ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right`` and Grafana's
``$variables``. What it cannot read (a selector without a metric name) raises, so an
expression is never checked only in part.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from tests.conftest import ROOT

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"

_STRING = r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`'
_TOKEN = re.compile(
    rf"""
      (?P<string>{_STRING})
    | (?P<matchers>\{{(?:{_STRING}|[^{{}}"'`])*\}})
    | (?P<range>\[[^\]]*\])
    | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*)
    | (?P<variable>\$\{{?\w+\}}?)
    | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE,
)
_MATCHER = re.compile(rf"\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*({_STRING})\s*(?:,|$)")
#: Followed by a parenthesised list of label names, not of expressions.
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
    "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
#: Never metric names (aggregations may be followed by ``by (...)`` first).
_KEYWORDS = (
    _LABEL_LISTS | _AGGREGATIONS | {"and", "or", "unless", "offset", "bool", "atan2"}
)
_LITERALS = {"inf", "nan"}


@dataclass(frozen=True)
class Selector:
    """One instant or range vector selector: ``metric{label op "value", ...}``."""

    metric: str
    matchers: tuple[tuple[str, str, str], ...] = ()

    def equal(self, label: str) -> str | None:
        """The value ``label`` must equal, if the selector says so."""
        return next((v for n, op, v in self.matchers if n == label and op == "="), None)


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _matchers(block: str) -> tuple[tuple[str, str, str], ...]:
    inner = block[1:-1].strip().rstrip(",")
    found: list[tuple[str, str, str]] = []
    position = 0
    while position < len(inner):
        match = _MATCHER.match(inner, position)
        if match is None:
            raise ValueError(f"cannot read the label matchers {block!r}")
        found.append((match[1], match[2], _unquote(match[3])))
        position = match.end()
    return tuple(found)


def selectors(expr: str) -> list[Selector]:
    """Every metric selector in ``expr``, in order."""
    tokens = [
        (m.lastgroup or "", m.group())
        for m in _TOKEN.finditer(expr)
        if m.lastgroup != "space"
    ]
    found: list[Selector] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "matchers":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        if kind != "name":
            i += 1
            continue
        if text in _LABEL_LISTS and following == ("other", "("):
            i = next(j for j in range(i, len(tokens)) if tokens[j] == ("other", ")"))
        elif following == ("other", "(") or text in _KEYWORDS:
            pass  # a function or aggregation: its arguments are read on
        elif text.lower() in _LITERALS:
            pass
        elif following[0] == "matchers":
            found.append(Selector(text, _matchers(following[1])))
            i += 1
        else:
            found.append(Selector(text))
        i += 1
    return found


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(ALERTS.read_text())["groups"]
    return groups


def recorded() -> set[str]:
    """The series our recording rules make."""
    return {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}


def rule_expressions() -> Iterator[tuple[str, str]]:
    """(where, expr) of every alerting and recording rule."""
    for group in rule_groups():
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            yield f"alerts.yml:{group['name']}:{name}", str(rule["expr"])


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    """(where, expr) of every query of every Grafana dashboard."""
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.name}:{panel['title']}", str(target["expr"])


def queried() -> dict[Selector, list[str]]:
    """Every selector of an exported metric (not one we record) that a rule or a
    dashboard uses, with where."""
    found: dict[Selector, list[str]] = {}
    ours = recorded()
    for where, expr in [*rule_expressions(), *dashboard_expressions()]:
        for selector in selectors(expr):
            if selector.metric not in ours:
                found.setdefault(selector, []).append(where)
    return found
