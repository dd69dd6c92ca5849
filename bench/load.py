"""A bounded load generator for `POST /api/tasks`: processes x threads, keep-alive, 127.0.0.1.

Each thread holds one HTTP/1.1 connection and sends one request at a time (closed loop),
so the concurrency is processes x threads. Every thread stops at a shared deadline or after
MAX_REQUESTS_PER_THREAD requests, whichever comes first.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

from bench.client import Client
from bench.noop_handlers import NOOP

MAX_REQUESTS_PER_THREAD = 200_000
# Time for the worker processes to start before the shared start moment.
START_DELAY_S = 1.5


def _thread(
    base: str, start_at: float, stop_at: float, out: list[float], errors: list[int]
) -> None:
    client = Client(base, timeout=30)
    body = {"type": NOOP, "duration_ms": 1}
    try:
        time.sleep(max(0.0, start_at - time.time()))
        for _ in range(MAX_REQUESTS_PER_THREAD):
            if time.time() >= stop_at:
                break
            began = time.perf_counter()
            try:
                status, _ = client.request("POST", "/api/tasks", body)
            except OSError:
                status = 0
            if status == 201:
                out.append(time.perf_counter() - began)
            else:
                errors[0] += 1
    finally:
        client.close()


def _process(args: tuple[str, int, float, float]) -> tuple[list[float], int]:
    base, threads, start_at, stop_at = args
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [[0] for _ in range(threads)]
    workers = [
        threading.Thread(target=_thread, args=(base, start_at, stop_at, latencies[i], errors[i]))
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [x for lat in latencies for x in lat], sum(e[0] for e in errors)


def post_load(base: str, processes: int, threads: int, seconds: float) -> dict[str, Any]:
    """Drive `POST /api/tasks` for `seconds`; return requests/s and latency percentiles."""
    start_at = time.time() + START_DELAY_S
    stop_at = start_at + seconds
    jobs = [(base, threads, start_at, stop_at)] * processes
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        results = pool.map(_process, jobs)
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(e for _, e in results)
    if not latencies:
        raise RuntimeError(f"no request succeeded ({errors} failed)")
    return {
        "concurrency": processes * threads,
        "seconds": seconds,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
    }


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
