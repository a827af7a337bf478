"""py-spy around the benchmarks: record a running process, then rank functions by share of samples.

``--profile`` on either benchmark records each measured process with ``py-spy record`` (threads that
are not idle, so C code that releases the GIL counts too) for the measured window and prints the
top functions, by own time and including callees. py-spy is a dev tool: ``.venv/bin/pip install py-spy``.
"""

from __future__ import annotations

import asyncio
import collections
import re
import shutil
import sys
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")
SITE = re.compile(r".*/(site-packages|lib/python3\.\d+)/")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def available() -> bool:
    return py_spy() is not None


async def record(pid: int, out: Path, duration: float) -> asyncio.subprocess.Process:
    """Starts recording ``pid`` for ``duration`` seconds into ``out`` (collapsed stacks)."""
    return await asyncio.create_subprocess_exec(
        py_spy() or "py-spy",
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(duration)),
        "--rate",
        "200",
        "--gil",
        "--format",
        "raw",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def _name(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = SITE.sub("", m.group("file"))
    path = path.split("/work/main/")[-1]
    return f"{m.group('func')} ({path})"


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by own samples and by inclusive samples, as % of all samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(f) for f in stack.split(";")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
        leaf_file = frames[-1].rsplit("(", 1)[-1].rstrip(")")
        modules[leaf_file.split("/")[0] if "/" in leaf_file else leaf_file] += count

    def pct(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / max(total, 1), 1)) for name, n in counter.most_common(top)]

    return {"samples": total, "own": pct(own), "inclusive": pct(inclusive), "own_by_package": pct(modules)}


def print_summary(title: str, summary: dict[str, Any]) -> None:
    print(f"\n== profile: {title} ({summary['samples']} samples of active threads)")
    print("  own time by package: " + ", ".join(f"{n} {p}%" for n, p in summary["own_by_package"][:8]))
    print("  top own time:")
    for name, p in summary["own"]:
        print(f"    {p:5.1f}%  {name}")
    print("  top inclusive:")
    for name, p in summary["inclusive"]:
        print(f"    {p:5.1f}%  {name}")
