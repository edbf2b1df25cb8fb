"""Replica logs for ``Controller.GetLogs``: which replicas, and reading their files.

The local runtime appends each replica's server output to one file (its
``Replica.log_path``). Paths come only from the runtime's own replicas, never from
the caller, so a request cannot name a file. Reads are bounded: the tail is found by
scanning blocks backwards from the end, and lines go out in chunks well below gRPC's
message limit, each line cut at ``MAX_LINE_BYTES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from matrixinfer.controller.domain.ports import ResourceCache
from matrixinfer.controller.domain.runtime import Replica, Runtime
from matrixinfer.core.errors import NotFound

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


@dataclass(frozen=True)
class LogChunk:
    """Some lines of one replica's log."""

    replica: str
    lines: list[str]


async def replica_logs(
    cache: ResourceCache,
    runtime: Runtime,
    namespace: str,
    model_infer: str,
    replica: str,
    tail: int | None,
    follow: bool,
) -> AsyncIterator[LogChunk]:
    """The logs of a ModelInfer's replicas (or of the one named ``replica``): the
    last ``tail`` lines (None: all), then, with ``follow``, new lines as they come
    until every replica is gone."""
    if cache.get("ModelInfer", namespace, model_infer) is None:
        raise NotFound(f"ModelInfer {namespace}/{model_infer} not found")
    owner = f"{namespace}/{model_infer}"
    replicas = sorted(runtime.replicas(owner), key=lambda r: r.name)
    if replica:
        replicas = [r for r in replicas if r.name == replica]
        if not replicas:
            names = ", ".join(sorted(r.name for r in runtime.replicas(owner)))
            raise NotFound(
                f"replica {replica} is not a replica of ModelInfer "
                f"{owner}; its replicas: {names or 'none'}"
            )
    if not follow:
        for one in replicas:
            if one.log_path is None:
                continue
            async for lines in stream_log(one.log_path, tail, False, lambda: False):
                yield LogChunk(replica=one.name, lines=lines)
        return
    async for chunk in _follow(runtime, owner, replicas, tail):
        yield chunk


async def _follow(
    runtime: Runtime, owner: str, replicas: list[Replica], tail: int | None
) -> AsyncIterator[LogChunk]:
    """Every replica's log at once, merged as lines arrive, until each replica
    is gone (or the caller cancels)."""
    queue: asyncio.Queue[LogChunk | None] = asyncio.Queue(maxsize=64)

    def alive(name: str) -> bool:
        return any(r.name == name for r in runtime.replicas(owner))

    async def pump(replica: Replica) -> None:
        try:
            if replica.log_path is not None:
                async for lines in stream_log(
                    replica.log_path, tail, True, lambda: alive(replica.name)
                ):
                    await queue.put(LogChunk(replica=replica.name, lines=lines))
        finally:  # not when cancelled: then nobody reads the queue any more
            if not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                await queue.put(None)

    tasks = [asyncio.create_task(pump(r)) for r in replicas]
    try:
        running = len(tasks)
        while running:
            chunk = await queue.get()
            if chunk is None:
                running -= 1
            else:
                yield chunk
        for task in tasks:
            await task  # a failed reader fails the call
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
