"""The aiohttp load generator (used when ``wrk`` is not installed): the same input, output and
semantics as ``bench/webhooks.lua``, except that at the deadline it stops sending and waits for the
requests in flight, so every request sent is answered.

    python -m bench.loadgen URL REQUESTS_FILE IDS_FILE --concurrency 64 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp

from bench.common import percentile

EVENT_ID = re.compile(rb'"event_id": *"([^"]+)"')


def read_requests(path: Path) -> list[tuple[str, bytes]]:
    out = []
    with path.open("rb") as f:
        while line := f.readline():
            sig, length = line.decode().split()
            out.append((sig, f.read(int(length))))
            f.read(1)
    return out


async def run(
    url: str, requests: list[tuple[str, bytes]], ids_path: Path, concurrency: int, duration: float
) -> dict[str, object]:
    latencies: list[float] = []
    counts = {"ok": 0, "non_200": 0, "errors": 0, "wrapped": 0}
    next_index = 0
    ids: list[bytes] = []
    deadline = time.monotonic() + duration

    async def one_client(http: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while time.monotonic() < deadline:
            if next_index >= len(requests):
                next_index, counts["wrapped"] = 0, counts["wrapped"] + 1
            sig, body = requests[next_index]
            next_index += 1
            started = time.perf_counter()
            try:
                async with http.post(
                    url, data=body, headers={"Content-Type": "application/json", "Plaid-Verification": sig}
                ) as resp:
                    answer = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                counts["errors"] += 1
                continue
            latencies.append(time.perf_counter() - started)
            if status == 200:
                counts["ok"] += 1
                found = EVENT_ID.search(answer)
                if found:
                    ids.append(found.group(1))
            else:
                counts["non_200"] += 1

    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        await asyncio.gather(*(one_client(http) for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    await asyncio.to_thread(ids_path.write_bytes, b"".join(i + b"\n" for i in ids))
    ms = [x * 1000 for x in latencies]
    return {
        "completed": len(latencies),
        "duration_s": round(elapsed, 3),
        "ok": counts["ok"],
        "non_200": counts["non_200"],
        "wrapped": counts["wrapped"],
        "connect_errors": counts["errors"],
        "read_errors": 0,
        "write_errors": 0,
        "timeouts": 0,
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms, default=0.0), 2),
        "mean_ms": round(sum(ms) / max(len(ms), 1), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("requests_file", type=Path)
    parser.add_argument("ids_file", type=Path)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    requests = read_requests(args.requests_file)
    result = asyncio.run(run(args.url, requests, args.ids_file, args.concurrency, args.duration))
    print("BENCH_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
