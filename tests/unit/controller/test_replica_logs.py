"""Reading replica log files for Controller.GetLogs: tails, partial lines, follow."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from matrixinfer.controller.domain import logs
from matrixinfer.controller.domain.logs import read_lines, stream_log, tail_offset


def _text(path: pathlib.Path, offset: int) -> str:
    return path.read_bytes()[offset:].decode()


@pytest.mark.parametrize("ending", ["\n", ""])
def test_tail_offset(tmp_path: pathlib.Path, ending: str) -> None:
    path = tmp_path / "r.log"
    path.write_text("a\nbb\nccc" + ending)
    assert _text(path, tail_offset(path, 1)) == "ccc" + ending
    assert _text(path, tail_offset(path, 2)) == "bb\nccc" + ending
    assert tail_offset(path, 3) == 0
    assert tail_offset(path, 50) == 0
    assert _text(path, tail_offset(path, 0)) == ""
    assert tail_offset(tmp_path / "missing.log", 5) == 0


def test_tail_across_blocks(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "BLOCK_BYTES", 7)
    path = tmp_path / "r.log"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert _text(path, tail_offset(path, 3)) == "line 97\nline 98\nline 99\n"


def test_partial_last_line_waits_unless_final(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "r.log"
    path.write_bytes(b"one\ntw")
    assert read_lines(path, 0, final=False) == (["one"], 4, 4)
    assert read_lines(path, 4, final=False) == ([], 4, 0)
    assert read_lines(path, 4, final=True) == (["tw"], 6, 2)


def test_truncated_file_starts_again(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "r.log"
    path.write_bytes(b"x\n")
    assert read_lines(path, 100, final=True) == (["x"], 2, 2)


def test_overlong_lines_are_cut(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "r.log"
    path.write_bytes(b"y" * (logs.MAX_LINE_BYTES + 10) + b"\n")
    (line,), _, _ = read_lines(path, 0, final=True)
    assert line.endswith("… (cut)") and len(line) < logs.MAX_LINE_BYTES + 20


async def test_follow_streams_new_lines_until_the_replica_goes(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "POLL_S", 0.01)
    path = tmp_path / "r.log"
    path.write_text("old 1\nold 2\n")
    alive = True
    seen: list[str] = []

    async def read() -> None:
        async for lines in stream_log(path, 1, True, lambda: alive):
            seen.extend(lines)

    task = asyncio.create_task(read())
    await asyncio.sleep(0.05)
    assert seen == ["old 2"]
    with path.open("a") as f:
        f.write("new 1\nnew")
    await asyncio.sleep(0.05)
    assert seen == ["old 2", "new 1"]
    alive = False  # the replica stopped: its last, unterminated line still comes
    await asyncio.wait_for(task, 2)
    assert seen == ["old 2", "new 1", "new"]
