"""Label selectors in Kubernetes syntax."""

from __future__ import annotations

import pytest

from matrixinfer.core.errors import InvalidArgument
from matrixinfer.registry.domain.selectors import parse_selector

LABELS = {"app": "demo", "tier": "gpu", "example.com/team": "ml"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("app=demo", True),
        ("app==demo", True),
        ("app!=demo", False),
        ("app=other", False),
        ("tier in (gpu, cpu)", True),
        ("tier notin (gpu)", False),
        ("tier,app", True),
        ("!tier", False),
        ("!missing", True),
        ("missing", False),
        ("example.com/team=ml, tier in (gpu)", True),
        ("app=demo,tier=cpu", False),
    ],
)
def test_selector_semantics(selector: str, expected: bool) -> None:
    assert parse_selector(selector)(LABELS) is expected


@pytest.mark.parametrize(
    "selector", ["a=b=c", "x in ()", "in (a)", "a=(b)", "a" * 5000, "=x"]
)
def test_bad_selectors_name_the_field(selector: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_selector(selector)
    assert info.value.violations[0].field == "labelSelector"
