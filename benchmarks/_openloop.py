"""An open-loop load generator for benchmarks/serving.py: requests leave on a fixed schedule whether or
not earlier ones were answered, and each latency counts from its scheduled time (no coordinated
omission). Run as its own process so its CPU is its own; prints one JSON line.

    python -m benchmarks._openloop URL IMAGE_LIST RATE SECONDS KEY
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, due: float, key: str
) -> tuple[int, float]:
    try:
        headers = {"Content-Type": "image/jpeg", "X-API-Key": key}
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            status = resp.status
    except aiohttp.ClientError:
        status = 0  # connection refused or reset: counted apart from HTTP answers
    return status, time.perf_counter() - due


async def run(
    url: str, bodies: list[bytes], rate: float, seconds: float, key: str
) -> list[tuple[int, float]]:
    connector = aiohttp.TCPConnector(limit=2048)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(_one(session, url, bodies[i % len(bodies)], due, key)))
        return list(await asyncio.gather(*tasks))


def _p(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("images", type=Path, help="a file with one image path a line")
    parser.add_argument("rate", type=float, help="requests per second")
    parser.add_argument("seconds", type=float)
    parser.add_argument("key", help="the application's API key (every other answer is a 401)")
    args = parser.parse_args()
    bodies = [Path(line).read_bytes() for line in args.images.read_text().split()]
    results = asyncio.run(run(args.url, bodies, args.rate, args.seconds, args.key))
    ok = [lat for status, lat in results if 200 <= status < 300]
    shed = [lat for status, lat in results if status == 503]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "offered": len(results),
                "offered_rps": args.rate,
                "accepted": len(ok),
                "shed": len(shed),
                "other": len(results) - len(ok) - len(shed),
                "statuses": dict(sorted(Counter(str(status) for status, _ in results).items())),
                "accepted_p50_ms": _p(ok, 50),
                "accepted_p99_ms": _p(ok, 99),
                "shed_p99_ms": _p(shed, 99),
                "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
