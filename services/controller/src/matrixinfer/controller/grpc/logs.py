"""Reading replica log files for ``Controller.GetLogs``.

The local runtime appends each replica's server output to one file (its
``Replica.log_path``). Paths come only from the runtime's own replicas, never from
the caller, so a request cannot name a file. Reads are bounded: the tail is found by
scanning blocks backwards from the end, and lines go out in chunks well below gRPC's
message limit, each line cut at ``MAX_LINE_BYTES``.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import AsyncIterator, Callable

BLOCK_BYTES = 64 * 1024
MAX_LINE_BYTES = 16 * 1024
#: Lines and bytes per streamed chunk.
CHUNK_LINES = 500
CHUNK_BYTES = 512 * 1024
POLL_S = 0.2


def _decode(line: bytes) -> str:
    if len(line) > MAX_LINE_BYTES:
        line = line[:MAX_LINE_BYTES] + "… (cut)".encode()
    return line.rstrip(b"\r").decode("utf-8", errors="replace")


def tail_offset(path: pathlib.Path, lines: int) -> int:
    """The byte offset where the last ``lines`` whole lines of ``path`` begin (a
    last line without a newline counts)."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            if lines == 0:
                return end
            pos, newlines = end, 0
            # A file ending in "\n": that newline ends the last line, not one more.
            f.seek(max(0, end - 1))
            if end and f.read(1) == b"\n":
                newlines = -1
            while pos > 0:
                start = max(0, pos - BLOCK_BYTES)
                f.seek(start)
                block = f.read(pos - start)
                for i in range(len(block) - 1, -1, -1):
                    if block[i] == 0x0A:
                        newlines += 1
                        if newlines == lines:
                            return start + i + 1
                pos = start
            return 0
    except FileNotFoundError:
        return 0


def read_lines(
    path: pathlib.Path, offset: int, final: bool
) -> tuple[list[str], int, int]:
    """Whole lines from ``offset`` on, at most about CHUNK_BYTES of them: (lines,
    new offset, bytes read). A trailing line without its newline is kept back for a
    later read unless ``final``. A file shorter than ``offset`` was truncated or
    replaced: reading starts again at 0."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < offset:
                offset = 0
            f.seek(offset)
            data = f.read(CHUNK_BYTES)
    except FileNotFoundError:
        return [], offset, 0
    more = offset + len(data) < size
    cut = data.rfind(b"\n")
    if cut < 0:
        if (final and not more) or len(data) >= CHUNK_BYTES:
            cut = len(data)  # the rest, or one overlong line
        else:
            return [], offset, 0
    else:
        if final and not more and cut != len(data) - 1:
            cut = len(data)  # the file's last line, unterminated
        else:
            cut += 1
    body = data[:cut]
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [_decode(line) for line in lines], offset + len(body), len(body)


async def stream_log(
    path: pathlib.Path,
    tail: int | None,
    follow: bool,
    alive: Callable[[], bool],
) -> AsyncIterator[list[str]]:
    """Batches of lines of one log: the tail (or everything), then, with ``follow``,
    new lines until ``alive()`` turns false (one last read after that)."""
    offset = 0 if tail is None else await asyncio.to_thread(tail_offset, path, tail)
    final = not follow
    while True:
        lines, offset, read = await asyncio.to_thread(read_lines, path, offset, final)
        for i in range(0, len(lines), CHUNK_LINES):
            yield lines[i : i + CHUNK_LINES]
        if read:
            continue  # there may be more right away
        if final:
            return
        if not alive():
            final = True  # one last read: what it wrote before it went
            continue
        await asyncio.sleep(POLL_S)
