"""The README's walk-throughs (canary, rollback, autoscaling and scale to zero), run
verbatim — each `<!-- walkthrough: NAME -->` block as one bash script — against a
fresh `matrixinfer up` on the default ports, as a reader would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT
from tests.e2e.test_quickstart import PORTS, Run, port_in_use, tritonservers_of

pytestmark = pytest.mark.timeout(400)
MARKER = re.compile(r"<!-- walkthrough: ([a-z-]+) -->\n```bash\n(.*?)```", re.S)


def walkthroughs() -> dict[str, str]:
    return dict(MARKER.findall((ROOT / "README.md").read_text()))


def run_block(name: str) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walkthroughs()[name]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"{name}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def platform_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    busy = [p for p in PORTS if port_in_use(p)]
    if busy:
        pytest.fail(f"the walk-throughs' ports are in use here: {busy}")
    state = tmp_path_factory.mktemp("walkthroughs") / "state"
    process = subprocess.Popen(
        [sys.executable, "-m", "matrixinfer.cli", "up", "--state-dir", str(state)],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    run = Run.attach(process)
    try:
        run.read_until("Press Ctrl-C", timeout_s=240)
        yield
    finally:
        if process.poll() is None:
            run.ctrl_c()
    assert tritonservers_of(state) == []


def test_the_walkthrough_blocks_are_found() -> None:
    assert set(walkthroughs()) == {
        "canary",
        "canary-cleanup",
        "rollback",
        "autoscaling",
    }


def test_canary_splits_traffic(platform_up: None) -> None:
    out = run_block("canary")
    counts = {name: int(n) for n, name in re.findall(r"^\s*(\d+) (\S+)$", out, re.M)}
    assert sum(counts.values()) == 200, out
    # 10 % of 200: the binomial spread makes 5..45 a bound that cannot flake.
    assert 5 <= counts.get("iris-v2", 0) <= 45, counts
    run_block("canary-cleanup")


def test_rollout_and_rollback(platform_up: None) -> None:
    out = run_block("rollback")
    assert "modelinfer/iris available (1/1 ready, model revision 2)" in out, out
    assert "modelinfer/iris available: 1/1 ready on revision 3" in out, out
    row = next(line for line in out.splitlines() if line.startswith("iris "))
    assert row.split()[2:4] == ["1/1", "3"], out


def test_autoscaling_to_three_and_to_zero_and_back(platform_up: None) -> None:
    out = run_block("autoscaling")
    header, row = next(
        (lines[i], lines[i + 1])
        for lines in [out.splitlines()]
        for i in range(len(lines) - 1)
        if lines[i].startswith("NAME") and "DESIRED" in lines[i]
    )
    desired = row.split()[header.split().index("DESIRED")]
    assert int(desired) >= 2, out  # scaled up under load
    assert re.search(r"\d+ requests answered, 0 failed", out), out
    answer = json.loads(out.strip().splitlines()[-1])  # the request at zero
    label = next(o for o in answer["outputs"] if o["name"] == "label")
    assert label["data"] == [2]
