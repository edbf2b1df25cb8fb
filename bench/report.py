"""Writing one benchmark's figures into BENCHMARKS.md between its markers."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def machine_line() -> str:
    return (
        f"Measured: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, "
        f"tritonserver of nvidia-pytriton {_version('nvidia-pytriton')}"
    )


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def write_section(name: str, title: str, lines: list[str]) -> None:
    """Replace the block between ``<!-- bench.NAME:begin/end -->`` (or append it
    under ``## title`` when the file has none yet)."""
    begin, end = f"<!-- bench.{name}:begin -->", f"<!-- bench.{name}:end -->"
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = "\n".join([begin, *lines, end])
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n" + block + "\n"
    path.write_text(text)
