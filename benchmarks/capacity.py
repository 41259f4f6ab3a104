"""Capacity: the ceilings of the shared components on WeLIP's request path, measured on this box.

Four parts, each driving WeLIP's own code in-process against the real Redis and PostgreSQL
(nothing re-implemented; no Ray, no vLLM):

* ``limiter``: the Redis Lua rate limiter (``welip.trust.RedisRateLimiter``). Each
  simulated request does what one gateway request does to it: ``admit`` (one script,
  the key's ``requests`` and ``tokens`` buckets) and, after the answer, ``charge`` (one
  script, the ``tokens`` bucket, the reservation's difference to the real usage).
  ``--clients`` asyncio clients in one process, then ``--processes`` processes of
  ``--clients-per-process`` clients each (one Redis client per process, as one per
  gateway replica). Reports requests/s, script calls/s, admit latency, the client
  processes' CPU per request and Redis's own CPU per 1,000 script calls (``INFO cpu``).
* ``audit``: audit records through the batch writer (``AuditWriter`` over
  ``AuditStore.write_audit``, its thread and transactions as shipped) into PostgreSQL, by
  ``--batch-sizes`` and ``--audit-processes`` (one writer per process, as one per
  replica). Reports rows/s, PostgreSQL's CPU per 1,000 rows (every ``postgres`` process),
  the writer process's CPU per row, bytes per row on disk (table + indexes) and of WAL.
* ``admission``: the gateway's own CPU per request, excluding the engine. The real
  gateway app (``build_gateway_app`` around ``GatewayCore`` and ``LocalEngine``) over a
  fake in-process engine that yields pre-made SSE chunks, called through ASGI by
  ``--concurrency`` concurrent streamed chat requests; each mode in its own process.
  Modes: ``driver`` (the fake engine alone, iterated by the load loop: the floor),
  ``off`` (the app, trust layer off), ``secure`` (as ``configs/serve/local-secure.yaml``:
  API key with its key cache warm, limits in Redis, prompt token counting, input and
  output PII guardrails, ``max_prompt_tokens``, audit into PostgreSQL) and
  ``secure-traced`` (the same with an OpenTelemetry SDK provider whose exporter encodes
  every span as OTLP protobuf and counts the bytes instead of sending them). Every mode
  but ``driver`` writes the access log as JSON lines to a file (bytes per line).
  Reports CPU ms per request (process CPU over requests), Redis commands and audit rows
  per request, spans and OTLP bytes per request.
* ``agents``: the built-in ``react`` graph (calculator tool, a fake chat model answering
  one tool call then the answer) on LangGraph's PostgreSQL checkpointer as WeLIP opens
  it (``open_checkpointer``), against the same graph on ``InMemorySaver``, and with
  ``durability="exit"``. Reports ms per run, checkpoint rows and bytes per run by table,
  WAL bytes and PostgreSQL CPU per run.

Every figure is the median of ``--repeats`` trials (configurations interleaved within a
repeat) with the spread; each trial records the box's load (``/proc/stat``: the share of
all CPUs busy, ours included) because this box may be shared.

    .venv/bin/python benchmarks/capacity.py                         # every part, 3 repeats
    .venv/bin/python benchmarks/capacity.py --part limiter --seconds 5 --clients 1,8,32,128
    .venv/bin/python benchmarks/capacity.py --part audit --batch-sizes 16,64,256,1024
    .venv/bin/python benchmarks/capacity.py --part admission --concurrency 32 --output-tokens 64
    .venv/bin/python benchmarks/capacity.py --part agents --agent-runs 50
    .venv/bin/python benchmarks/capacity.py --seconds 1 --repeats 1 --agent-runs 5   # smoke

Redis: ``--redis-url`` (default ``redis://127.0.0.1:6379/12``), keys under ``--prefix``
(deleted afterwards). PostgreSQL: a fresh database ``welip_capacity_<pid>`` on
``--admin-url``'s server (dropped afterwards), or ``--database-url``. Results:
``benchmarks/results/capacity-<stamp>.json``; ``benchmarks/CAPACITY.md`` reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
MODEL = "smollm2-135m-instruct"
TICKS = os.sysconf("SC_CLK_TCK")
CHILD_TIMEOUT_S = 300
# What the limiter's Lua script runs inside Redis (INFO commandstats counts them as well).
_SCRIPT_COMMANDS = ("time", "hmget", "hset", "pexpire")
ADMISSION_MODES = ("driver", "off", "secure", "secure-traced")
AGENT_MODES = ("memory", "postgres", "postgres-exit")

# A 128-token-ish prompt (no PII: the guardrails scan it all and find nothing, the common case).
PROMPT = (
    "You are helping an operations team plan capacity for a language model platform. "
    "Summarize in three sentences what limits how many requests per second a gateway can admit "
    "when every request is authenticated, rate limited in a shared store, checked by guardrails "
    "and recorded in an audit table, and say which of these costs grows with the number of "
    "output tokens and which grows only with the number of requests. Keep the answer short, "
    "plain and concrete, and avoid any list formatting in the reply."
)


# --- measuring the box and the shared services ---------------------------------------------


def _cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of all the box's CPUs busy between two readings (0..1), anyone's work included."""
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total else 0.0


def _pg_cpu_s() -> float:
    """CPU seconds used so far by every process named ``postgres`` on this machine (backends too)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            if "(postgres)" not in text:
                continue
            fields = text.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def _redis_stats(url: str) -> dict[str, float]:
    """Redis's own CPU seconds (``INFO cpu``) and its command counts (``INFO commandstats``)."""
    from redis import Redis

    client = Redis.from_url(url)
    try:
        cpu = client.info("cpu")
        stats = client.info("commandstats")
    finally:
        client.close()
    out = {"cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])}
    for name, entry in stats.items():
        out[name.removeprefix("cmdstat_")] = float(entry["calls"])
    return out


def _redis_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}


def _spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    """Median and range of the repeats (and each one)."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def _fmt(spread: dict[str, Any], digits: int = 1) -> str:
    """``median (min-max)`` for a table cell."""
    med, lo, hi = spread["median"], spread["min"], spread["max"]
    return f"{med:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _run_children(
    target: Callable[..., None], args_list: list[tuple[Any, ...]], probe: Callable[[], dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Start one process per ``args_list`` entry, let them warm up, start them together.

    Each child gets ``(*args, ready, start, results, release)``: it puts anything on ``ready``
    once warm, waits for ``start``, measures, puts its result dict on ``results`` and waits
    for ``release`` before it closes its connections.
    ``probe`` is read just before the start and after the last result.
    """
    ctx = mp.get_context("spawn")  # a fresh interpreter: no inherited loop, threads or connections
    ready, results, start, release = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=target, args=(*args, ready, start, results, release)) for args in args_list]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=CHILD_TIMEOUT_S)
        before = probe()
        start.set()
        out = [results.get(timeout=CHILD_TIMEOUT_S) for _ in procs]
        after = probe()  # before the children disconnect: a backend's CPU time leaves with it
    finally:
        release.set()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return out, before, after


# --- part limiter: the Redis Lua limiter ------------------------------------------------------


def _limiter_child(
    redis_url: str,
    prefix: str,
    clients: int,
    subjects: int,
    seconds: float,
    ready: Any,
    start: Any,
    results: Any,
    release: Any,
) -> None:
    asyncio.run(
        _limiter_clients(redis_url, prefix, clients, subjects, seconds, ready, start, results, release)
    )


async def _limiter_clients(
    redis_url: str,
    prefix: str,
    clients: int,
    subjects: int,
    seconds: float,
    ready: Any,
    start: Any,
    results: Any,
    release: Any,
) -> None:
    from redis.asyncio import Redis

    from welip.trust import Bucket, RedisRateLimiter

    # As welip.store.redis_from_env makes it: one client (and connection pool) per replica.
    redis = Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    limiter = RedisRateLimiter(redis, prefix)
    tokens = Bucket("tokens", 10**12)
    admit_buckets = [Bucket("requests", 10**9), tokens]  # never refused: every call runs the script
    pid = os.getpid()

    async def request(subject: str) -> float:
        started = time.perf_counter()
        decision = await limiter.admit(subject, admit_buckets, [1, 128 + 256])  # prompt + max_tokens
        admitted = time.perf_counter() - started
        if not decision.allowed:
            raise RuntimeError(f"refused: {decision}")
        await limiter.charge(subject, [tokens], [-192])  # settle: what the engine did not use
        return admitted

    # A connection each, as far as the pool allows (redis-py's default: 100 per client).
    await asyncio.gather(*(request(f"warm-{pid}-{i}") for i in range(clients)), return_exceptions=True)
    ready.put(pid)
    await asyncio.to_thread(start.wait)
    latencies: list[float] = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    end = t0 + seconds

    errors: dict[str, int] = {}

    async def client(i: int) -> None:
        n = i
        while time.perf_counter() < end:
            try:
                latencies.append(await request(f"k{n % subjects}"))
            except Exception as exc:  # noqa: BLE001 - counted: what the trust layer would answer 503 for
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            n += clients

    await asyncio.gather(*(client(i) for i in range(clients)))
    wall_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    results.put(
        {
            "requests": len(latencies),
            "errors": errors,
            "wall_s": wall_s,
            "cpu_s": cpu_s,
            "admit_p50_ms": 1000 * _percentile(latencies, 0.5),
            "admit_p99_ms": 1000 * _percentile(latencies, 0.99),
        }
    )
    await asyncio.to_thread(release.wait)
    await redis.aclose()


def bench_limiter(args: argparse.Namespace) -> dict[str, Any]:
    """Admissions/s of the Redis limiter by concurrent clients and processes; Redis's CPU per call."""
    shapes = [(1, c) for c in args.clients] + [(p, args.clients_per_process) for p in args.processes]
    trials: dict[str, list[dict[str, Any]]] = {f"{p}x{c}": [] for p, c in shapes}
    error_kinds: dict[str, list[str]] = {}

    def probe() -> dict[str, Any]:
        return {"redis": _redis_stats(args.redis_url), "cpu": _cpu_busy(), "t": time.perf_counter()}

    for repeat in range(args.repeats):
        for processes, clients in shapes:
            child_args = [
                (args.redis_url, args.prefix, clients, args.subjects, args.seconds) for _ in range(processes)
            ]
            out, before, after = _run_children(_limiter_child, child_args, probe)
            redis = _redis_delta(before["redis"], after["redis"])
            requests = sum(o["requests"] for o in out)
            wall_s = after["t"] - before["t"]
            seconds = max(o["wall_s"] for o in out)
            calls = redis.get("evalsha", 0.0)
            errors: dict[str, int] = {}
            for o in out:
                for name, count in o["errors"].items():
                    errors[name] = errors.get(name, 0) + count
            trial = {
                "requests_per_s": requests / seconds,
                "errors_per_s": sum(errors.values()) / seconds,
                "script_calls_per_s": calls / wall_s,
                "admit_p50_ms": statistics.median(o["admit_p50_ms"] for o in out),
                "admit_p99_ms": max(o["admit_p99_ms"] for o in out),
                "client_cpu_ms_per_request": 1000 * sum(o["cpu_s"] for o in out) / requests,
                "client_cpu_cores": sum(o["cpu_s"] for o in out) / seconds,
                "redis_cpu_ms_per_1000_calls": 1000 * 1000 * redis["cpu_s"] / calls if calls else 0.0,
                "redis_cpu_cores": redis["cpu_s"] / wall_s,
                "redis_calls_per_request": calls / requests,
                "box_busy": _busy_share(before["cpu"], after["cpu"]),
            }
            trials[f"{processes}x{clients}"].append(trial)
            error_kinds[f"{processes}x{clients}"] = sorted(
                {*error_kinds.get(f"{processes}x{clients}", []), *errors}
            )
            print(
                f"limiter repeat {repeat + 1} {processes}x{clients}: {trial['requests_per_s']:,.0f} req/s "
                f"({sum(errors.values())} errors {sorted(errors)}), "
                f"redis {trial['redis_cpu_cores']:.2f} cores, clients {trial['client_cpu_cores']:.2f} cores",
                flush=True,
            )
    _clean_redis(args.redis_url, args.prefix)
    summary = {
        shape: {key: _spread([t[key] for t in runs]) for key in runs[0]} for shape, runs in trials.items()
    }
    print("\nlimiter (processes x asyncio clients; median (min-max) of repeats):")
    print(
        "| clients | requests/s | errors/s | script calls/s | admit p50 ms | admit p99 ms "
        "| client CPU ms/request | Redis CPU ms/1k calls | Redis cores | client cores | box busy |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for shape, s in summary.items():
        print(
            f"| {shape} | {_fmt(s['requests_per_s'], 0)} | {_fmt(s['errors_per_s'], 0)} "
            f"| {_fmt(s['script_calls_per_s'], 0)} "
            f"| {_fmt(s['admit_p50_ms'], 2)} | {_fmt(s['admit_p99_ms'], 2)} "
            f"| {_fmt(s['client_cpu_ms_per_request'], 3)} | {_fmt(s['redis_cpu_ms_per_1000_calls'], 1)} "
            f"| {_fmt(s['redis_cpu_cores'], 2)} | {_fmt(s['client_cpu_cores'], 2)} "
            f"| {_fmt(s['box_busy'], 2)} |"
        )
    if any(error_kinds.values()):
        print(f"errors: {error_kinds}")
    return {
        "part": "limiter",
        "seconds": args.seconds,
        "subjects": args.subjects,
        "shapes": summary,
        "errors": error_kinds,
    }


def _clean_redis(url: str, prefix: str) -> None:
    """Delete this benchmark's keys (and only them)."""
    from redis import Redis

    client = Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    finally:
        client.close()


# --- part audit: rows/s through the batch writer ------------------------------------------------


def _audit_record(n: int, principals: int) -> Any:
    from welip.trust._audit import AuditRecord

    refused = n % 100 == 0
    key = f"key_{n % principals:016x}"
    return AuditRecord(
        id=uuid.uuid4().hex,
        ts=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        request_id=uuid.uuid4().hex,
        principal=key,
        principal_kind="api_key",
        key_id=key,
        role="user",
        method="POST",
        route="/v1/chat/completions",
        model=MODEL,
        status=429 if refused else 200,
        error_code="rate_limit_exceeded" if refused else None,
        prompt_tokens=None if refused else 128,
        completion_tokens=None if refused else 256,
        latency_ms=round(1000 + n % 997 * 3.7, 3),
        cache=None,
        guardrails=None,
        replica="welip#gateway#a1b2c3d4",
    )


def _audit_child(
    database_url: str,
    batch_size: int,
    seconds: float,
    principals: int,
    spool_dir: str,
    ready: Any,
    start: Any,
    results: Any,
    release: Any,
) -> None:
    from welip.store import AuditStore, Database
    from welip.trust import AuditConfig
    from welip.trust._audit import AuditWriter

    database = Database(database_url)
    store = AuditStore(database)
    config = AuditConfig(
        enabled=True, batch_size=batch_size, spool_dir=spool_dir, max_queue_records=10_000_000
    )
    writer = AuditWriter(store.write_audit, config)
    writer.submit(_audit_record(0, principals))  # connect and warm the writer's path
    while writer.pending():
        time.sleep(0.01)
    ready.put(os.getpid())
    start.wait()
    # The queue is kept a few batches deep: the writer never waits for records, and the
    # producer (this thread) mostly sleeps, as a replica's event loop would hand records over.
    depth = max(4 * batch_size, 1024)
    submitted = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        if writer.pending() < depth:
            writer.submit(_audit_record(submitted, principals))
            submitted += 1
        else:
            time.sleep(0.0005)
    writer._wake.set()  # the last partial batch now, not after flush_interval_s
    while writer.pending():
        time.sleep(0.0005)
    wall_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    # A batch whose transaction failed (two writers' usage_daily upserts deadlock) was spooled;
    # the writer replays it at its next flush. Counted, and waited for.
    spooled = writer.spooled()
    deadline = time.monotonic() + 2
    while writer.spooled() and time.monotonic() < deadline:
        time.sleep(0.05)
    results.put(
        {"rows": submitted, "wall_s": wall_s, "cpu_s": cpu_s, "spooled": spooled, "left": writer.spooled()}
    )
    release.wait()
    writer.close()
    database.dispose()


def _pg_sizes(admin_dsn: str) -> dict[str, float]:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM audit_log), pg_total_relation_size('audit_log'), "
            "pg_relation_size('audit_log'), pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"
        ).fetchone()
    assert row is not None
    return {"rows": row[0], "total_bytes": row[1], "heap_bytes": row[2], "wal": float(row[3])}


def bench_audit(args: argparse.Namespace, database_url: str) -> dict[str, Any]:
    """Audit rows/s into PostgreSQL through the batch writer, by batch size and writer processes."""
    import psycopg

    dsn = _psycopg_dsn(database_url)
    shapes = [(p, b) for p in args.audit_processes for b in args.batch_sizes]
    trials: dict[str, list[dict[str, Any]]] = {f"{p}x{b}": [] for p, b in shapes}

    def probe() -> dict[str, Any]:
        return {
            "pg_cpu_s": _pg_cpu_s(),
            "sizes": _pg_sizes(dsn),
            "cpu": _cpu_busy(),
            "t": time.perf_counter(),
        }

    for repeat in range(args.repeats):
        for processes, batch in shapes:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("TRUNCATE audit_log, usage_daily")
                conn.execute("VACUUM audit_log")
            spool = tempfile.mkdtemp(prefix="welip-capacity-spool-")  # per trial: no replay of another's
            child_args = [
                (database_url, batch, args.seconds, args.principals, spool) for _ in range(processes)
            ]
            out, before, after = _run_children(_audit_child, child_args, probe)
            rows = sum(o["rows"] for o in out)
            stored = after["sizes"]["rows"] - before["sizes"]["rows"]
            seconds = max(o["wall_s"] for o in out)
            pg_cpu_s = after["pg_cpu_s"] - before["pg_cpu_s"]
            trial = {
                "rows_per_s": rows / seconds,
                "pg_cpu_ms_per_1000_rows": 1000 * 1000 * pg_cpu_s / rows,
                "pg_cpu_cores": pg_cpu_s / (after["t"] - before["t"]),
                "writer_cpu_us_per_row": 1e6 * sum(o["cpu_s"] for o in out) / rows,
                "writer_cpu_cores": sum(o["cpu_s"] for o in out) / seconds,
                "disk_bytes_per_row": after["sizes"]["total_bytes"] / after["sizes"]["rows"],
                "heap_bytes_per_row": after["sizes"]["heap_bytes"] / after["sizes"]["rows"],
                "wal_bytes_per_row": (after["sizes"]["wal"] - before["sizes"]["wal"]) / stored,
                "spooled_rows": sum(o["spooled"] for o in out),
                "box_busy": _busy_share(before["cpu"], after["cpu"]),
            }
            left = sum(o["left"] for o in out)  # spooled and not replayed yet: the writer retries
            if stored + left != rows:  # only when new records come, so an idle one waits
                raise RuntimeError(f"audit: {rows} records submitted, {stored} stored: {out}")
            trials[f"{processes}x{batch}"].append(trial)
            print(
                f"audit repeat {repeat + 1} {processes} writer(s), batch {batch}: "
                f"{trial['rows_per_s']:,.0f} rows/s, postgres {trial['pg_cpu_cores']:.2f} cores, "
                f"writers {trial['writer_cpu_cores']:.2f}",
                flush=True,
            )
    summary = {
        shape: {key: _spread([t[key] for t in runs]) for key in runs[0]} for shape, runs in trials.items()
    }
    print("\naudit (writer processes x batch size; median (min-max) of repeats):")
    print(
        "| writers x batch | rows/s | PostgreSQL CPU ms/1k rows | PostgreSQL cores | writer CPU µs/row "
        "| writer cores | disk bytes/row | WAL bytes/row | rows spooled | box busy |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for shape, s in summary.items():
        print(
            f"| {shape} | {_fmt(s['rows_per_s'], 0)} | {_fmt(s['pg_cpu_ms_per_1000_rows'], 1)} "
            f"| {_fmt(s['pg_cpu_cores'], 2)} | {_fmt(s['writer_cpu_us_per_row'], 1)} "
            f"| {_fmt(s['writer_cpu_cores'], 2)} | {_fmt(s['disk_bytes_per_row'], 0)} "
            f"| {_fmt(s['wal_bytes_per_row'], 0)} | {s['spooled_rows']['runs']} | {_fmt(s['box_busy'], 2)} |"
        )
    return {"part": "audit", "seconds": args.seconds, "principals": args.principals, "shapes": summary}


# --- part admission: the gateway's CPU per request ----------------------------------------------


class _FakeVLLM:
    """What ``LocalEngine`` calls: ``engine.chat(body, None)``, an async generator of SSE strings."""

    def __init__(self, output_tokens: int) -> None:
        head = {"id": "chatcmpl-capacity", "object": "chat.completion.chunk", "created": 0, "model": MODEL}

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            return (
                "data: " + json.dumps({**head, "choices": choices, **extra}, separators=(",", ":")) + "\n\n"
            )

        self.role = event([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
        self.tokens = [
            event([{"index": 0, "delta": {"content": f" word{i % 50}"}, "finish_reason": None}])
            for i in range(output_tokens - 1)
        ]
        self.last = event([{"index": 0, "delta": {"content": "."}, "finish_reason": "length"}])
        self.output_tokens = output_tokens
        self.engine = self

    async def chat(self, body: Any, raw_request: Any) -> AsyncIterator[str]:
        # vLLM's serving_chat yields one SSE string per token; the loop runs between them.
        yield self.role
        for text in self.tokens:
            await asyncio.sleep(0)
            yield text
        yield self.last
        options = getattr(body, "stream_options", None)
        if options is not None and options.include_usage:
            usage = {"prompt_tokens": 150, "completion_tokens": self.output_tokens}
            usage["total_tokens"] = usage["prompt_tokens"] + self.output_tokens
            chunk = {"id": "chatcmpl-capacity", "object": "chat.completion.chunk", "created": 0}
            yield "data: " + json.dumps({**chunk, "model": MODEL, "choices": [], "usage": usage}) + "\n\n"
        yield "data: [DONE]\n\n"

    async def check_health(self) -> None:
        return None


class _CountingExporter:
    """An OTLP span exporter that encodes every batch as the HTTP exporter would, and counts it."""

    def __init__(self) -> None:
        self.spans = 0
        self.bytes = 0

    def export(self, spans: Any) -> Any:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.spans += len(spans)
        self.bytes += len(encode_spans(spans).SerializeToString())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _secure_config(prefix: str, spool_dir: str, concurrency: int) -> dict[str, Any]:
    """``configs/serve/local-secure.yaml``'s gateway trust settings (Redis prefix and spool ours)."""
    return {
        "auth": {"enabled": True, "admin_key_env": None, "key_cache_s": 5},
        "limits": {
            "default_rpm": 600,
            "default_tpm": 200000,
            "max_in_flight_per_model": max(128, concurrency),
            "redis_prefix": prefix,
        },
        "audit": {"enabled": True, "spool_dir": spool_dir},
        "guardrails": {
            "input": {"pii": ["kr_rrn", "credit_card"], "pii_action": "redact"},
            "output": {"pii": ["kr_rrn"], "pii_action": "redact"},
            "max_prompt_tokens": 2048,
        },
    }


def _admission_child(spec: dict[str, Any], ready: Any, start: Any, results: Any, release: Any) -> None:
    asyncio.run(_admission(spec, ready, start, results, release))


async def _admission(spec: dict[str, Any], ready: Any, start: Any, results: Any, release: Any) -> None:
    """One mode's trial (``spec``: the mode and ``bench_admission``'s settings), in its own process."""
    from redis.asyncio import Redis

    from welip.api import parse_chat
    from welip.gateway import GatewayConfig, GatewayCore, LocalEngine, ModelCard, build_gateway_app
    from welip.models import resolve_model_path
    from welip.observability._logging import JsonLineFormatter
    from welip.store import Database
    from welip.trust import TokenCounter, Trust

    mode, concurrency, output_tokens, scratch = (
        spec["mode"],
        spec["concurrency"],
        spec["output_tokens"],
        spec["scratch"],
    )
    exporter = _CountingExporter()
    provider: Any = None
    if mode == "secure-traced":
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # As welip.observability.setup_tracing installs it, with the exporter counting bytes.
        provider = TracerProvider(resource=Resource.create({"service.name": "welip-gateway"}))
        provider.add_span_processor(BatchSpanProcessor(exporter))  # type: ignore[arg-type]
        trace.set_tracer_provider(provider)

    fake = _FakeVLLM(output_tokens)
    log_path = Path(scratch) / f"access-{mode}-{os.getpid()}.jsonl"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": output_tokens,
    }
    raw = json.dumps(body).encode()
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(raw)).encode()),
        (b"authorization", f"Bearer {spec['api_key']}".encode()),
        (b"accept", b"*/*"),
    ]
    app: Any = None
    trust: Any = None
    redis: Any = None
    database: Any = None
    if mode != "driver":
        handler = logging.FileHandler(log_path)
        handler.setFormatter(JsonLineFormatter())
        access = logging.getLogger("welip.gateway.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
        if mode == "off":
            config = GatewayConfig()
        else:
            config = GatewayConfig.model_validate(
                _secure_config(spec["prefix"], str(Path(scratch) / "spool"), concurrency)
            )
            database = Database(spec["database_url"])
            redis = Redis.from_url(spec["redis_url"], socket_timeout=2.0, socket_connect_timeout=2.0)
            counter = TokenCounter.load(resolve_model_path(MODEL))
            trust = Trust(
                config, database=database, redis=redis, replica="capacity", token_counters={MODEL: counter}
            )
        cards = [ModelCard(id=MODEL, created=0, root=MODEL, max_model_len=2048)]
        core = GatewayCore({MODEL: LocalEngine(fake)}, cards, config, trust=trust)
        app = build_gateway_app(core)

    async def call_app() -> int:
        finished = asyncio.Event()
        sent = False
        status = 0
        tail = b""

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await finished.wait()  # as uvicorn: a disconnect only once the response is over
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, tail
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                tail = (tail + message.get("body", b""))[-64:]
                if not message.get("more_body"):
                    finished.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},  # uvicorn's
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": list(headers),
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)
        if status != 200 or not tail.endswith(b"data: [DONE]\n\n"):
            raise RuntimeError(f"{mode}: status {status}, ends {tail!r}")
        return status

    async def call_driver() -> int:
        # The floor: parse the body and iterate the fake engine, no app.
        request = parse_chat(raw)
        size = 0
        async for text in fake.chat(request, None):
            size += len(text)
        return 200

    call = call_driver if mode == "driver" else call_app
    for _ in range(max(20, concurrency)):  # key cache, script load, tokenizer, connections
        await call()
    if trust is not None and trust.audit is not None:
        while trust.audit.pending():
            await asyncio.sleep(0.01)
    if provider is not None:
        provider.force_flush()  # the warm-up's spans are not counted
    exporter.spans = exporter.bytes = 0
    ready.put(os.getpid())
    await asyncio.to_thread(start.wait)
    done = 0
    log_before = log_path.stat().st_size if log_path.exists() else 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    end = t0 + spec["seconds"]

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await call()
            done += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall_s = time.perf_counter() - t0
    if trust is not None:
        await asyncio.sleep(0)  # let settle's reconciliation tasks run
        while trust._tasks:
            await asyncio.sleep(0.001)
        if trust.audit is not None:
            while trust.audit.pending():
                await asyncio.sleep(0.005)
    if provider is not None:
        provider.force_flush()
    cpu_s = time.process_time() - cpu0  # after the audit writer and span export caught up
    log_bytes = (log_path.stat().st_size if log_path.exists() else 0) - log_before
    results.put(
        {
            "requests": done,
            "wall_s": wall_s,
            "cpu_s": cpu_s,
            "log_bytes": log_bytes,
            "spans": exporter.spans,
            "span_bytes": exporter.bytes,
        }
    )
    await asyncio.to_thread(release.wait)
    if trust is not None:
        trust.close()
    if redis is not None:
        await redis.aclose()
    if database is not None:
        database.dispose()


def bench_admission(args: argparse.Namespace, database_url: str) -> dict[str, Any]:
    """The gateway's CPU per request (engine excluded) by mode; Redis calls and audit rows per request."""
    from welip.store import Database, KeyStore, hash_key

    dsn = _psycopg_dsn(database_url)
    store = KeyStore(Database(database_url))
    _, api_key = store.create_key(name="capacity", role="user", rpm=10**9, tpm=10**12)
    lookups = [_key_lookups(store, hash_key(api_key), args.seconds) for _ in range(args.repeats)]
    scratch = tempfile.mkdtemp(prefix="welip-capacity-admission-")
    trials: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.admission_modes}

    def probe() -> dict[str, Any]:
        return {
            "redis": _redis_stats(args.redis_url),
            "sizes": _pg_sizes(dsn),
            "pg_cpu_s": _pg_cpu_s(),
            "cpu": _cpu_busy(),
        }

    for repeat in range(args.repeats):
        for mode in args.admission_modes:
            spec = {
                "mode": mode,
                "database_url": database_url,
                "redis_url": args.redis_url,
                "prefix": args.prefix,
                "api_key": api_key,
                "concurrency": args.concurrency,
                "seconds": args.seconds,
                "output_tokens": args.output_tokens,
                "scratch": scratch,
            }
            (out,), before, after = _run_children(_admission_child, [(spec,)], probe)
            requests = out["requests"]
            redis = _redis_delta(before["redis"], after["redis"])
            # commandstats counts the commands scripts run too: the top-level ones are the round trips.
            inner = ("cpu_s", "info", *_SCRIPT_COMMANDS)
            commands = sum(v for k, v in redis.items() if k not in inner)
            trial = {
                "requests_per_s": requests / out["wall_s"],
                "cpu_ms_per_request": 1000 * out["cpu_s"] / requests,
                "cpu_cores": out["cpu_s"] / out["wall_s"],
                "redis_commands_per_request": commands / requests,
                "redis_command_counts": {k: v for k, v in redis.items() if k not in ("cpu_s", "info")},
                "evalsha_per_request": redis.get("evalsha", 0.0) / requests,
                "audit_rows_per_request": (after["sizes"]["rows"] - before["sizes"]["rows"]) / requests,
                "pg_cpu_ms_per_request": 1000 * (after["pg_cpu_s"] - before["pg_cpu_s"]) / requests,
                "access_log_bytes_per_request": out["log_bytes"] / requests,
                "spans_per_request": out["spans"] / requests,
                "otlp_bytes_per_request": out["span_bytes"] / requests,
                "box_busy": _busy_share(before["cpu"], after["cpu"]),
            }
            trials[mode].append(trial)
            print(
                f"admission repeat {repeat + 1} {mode}: {trial['cpu_ms_per_request']:.3f} ms CPU/request, "
                f"{trial['requests_per_s']:,.0f} req/s",
                flush=True,
            )
    _clean_redis(args.redis_url, args.prefix)
    command_counts = {mode: [t.pop("redis_command_counts") for t in runs] for mode, runs in trials.items()}
    summary = {
        mode: {key: _spread([t[key] for t in runs], 4) for key in runs[0]} for mode, runs in trials.items()
    }
    print(
        f"\nadmission ({args.concurrency} concurrent streamed chat requests, "
        f"{args.output_tokens} output tokens; median (min-max) of repeats):"
    )
    print(
        "| mode | CPU ms/request | requests/s (one process) | Redis cmds/request | audit rows/request "
        "| PostgreSQL CPU ms/request | access log bytes/request | spans/request | OTLP bytes/request "
        "| box busy |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode, s in summary.items():
        print(
            f"| {mode} | {_fmt(s['cpu_ms_per_request'], 3)} | {_fmt(s['requests_per_s'], 0)} "
            f"| {_fmt(s['redis_commands_per_request'], 2)} | {_fmt(s['audit_rows_per_request'], 2)} "
            f"| {_fmt(s['pg_cpu_ms_per_request'], 3)} | {_fmt(s['access_log_bytes_per_request'], 0)} "
            f"| {_fmt(s['spans_per_request'], 2)} | {_fmt(s['otlp_bytes_per_request'], 0)} "
            f"| {_fmt(s['box_busy'], 2)} |"
        )
    lookup = {key: _spread([t[key] for t in lookups]) for key in lookups[0]}
    print(
        f"API key look-ups (KeyStore.key_by_hash, one connection, a cache miss each): "
        f"{_fmt(lookup['lookups_per_s'], 0)}/s, PostgreSQL CPU {_fmt(lookup['pg_cpu_ms_per_1000'], 1)} ms "
        f"per 1,000, client CPU {_fmt(lookup['client_cpu_ms_per_1000'], 1)} ms per 1,000"
    )
    return {
        "part": "admission",
        "key_lookups": lookup,
        "redis_command_counts": command_counts,
        "concurrency": args.concurrency,
        "output_tokens": args.output_tokens,
        "seconds": args.seconds,
        "modes": summary,
    }


def _key_lookups(store: Any, digest: str, seconds: float) -> dict[str, float]:
    """What one replica's key-cache miss costs: ``KeyStore.key_by_hash`` in a loop (as auth runs it)."""
    store.key_by_hash(digest)
    pg0, cpu0, t0 = _pg_cpu_s(), time.process_time(), time.perf_counter()
    count = 0
    while time.perf_counter() < t0 + seconds:
        if store.key_by_hash(digest) is None:
            raise RuntimeError("the benchmark's key is gone")
        count += 1
    wall_s = time.perf_counter() - t0
    return {
        "lookups_per_s": count / wall_s,
        "pg_cpu_ms_per_1000": 1000 * 1000 * (_pg_cpu_s() - pg0) / count,
        "client_cpu_ms_per_1000": 1000 * 1000 * (time.process_time() - cpu0) / count,
    }


# --- part agents: checkpoint writes per run -------------------------------------------------------


def _checkpoint_stats(dsn: str) -> dict[str, float]:
    import psycopg

    out: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("checkpoints", "checkpoint_writes", "checkpoint_blobs"):
            row = conn.execute(
                f"SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0), pg_total_relation_size('{table}') "
                f"FROM {table} t"
            ).fetchone()
            assert row is not None
            out[f"{table}_rows"], out[f"{table}_row_bytes"], out[f"{table}_disk_bytes"] = map(float, row)
        wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()
        assert wal is not None
        out["wal"] = float(wal[0])
    out["pg_cpu_s"] = _pg_cpu_s()
    return out


async def _agent_trial(database_url: str, mode: str, runs: int) -> dict[str, Any]:
    import itertools

    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langgraph.checkpoint.memory import InMemorySaver

    from welip.agents import AgentConfig, compile_graphs, open_checkpointer

    agent = AgentConfig.model_validate(
        {
            "assistant_id": "capacity",
            "name": "capacity",
            "graph": "react",
            "tools": ["calculator"],
            "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "fake", "api_key_env": None},
        }
    )
    step = json.dumps({"thought": "add them", "action": "calculator", "action_input": "2+2"})
    answer = json.dumps({"thought": "done", "action": "final_answer", "action_input": "4"})
    model = GenericFakeChatModel(messages=itertools.cycle([AIMessage(step), AIMessage(answer)]))
    dsn = _psycopg_dsn(database_url)
    calls: dict[str, list[float]] = {}

    def timed(saver: Any) -> None:
        for name in ("aget_tuple", "aput", "aput_writes"):
            method = getattr(saver, name)

            async def wrapper(*a: Any, _method: Any = method, _name: str = name, **kw: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await _method(*a, **kw)
                finally:
                    calls.setdefault(_name, []).append(time.perf_counter() - started)

            setattr(saver, name, wrapper)

    async def measure(saver: Any) -> dict[str, Any]:
        timed(saver)
        graph = compile_graphs([agent], saver, models={"capacity": model})["capacity"]
        durability = "exit" if mode == "postgres-exit" else "async"

        async def one() -> float:
            config = {"configurable": {"thread_id": uuid.uuid4().hex}}
            started = time.perf_counter()
            values = await graph.ainvoke(
                {"messages": [{"role": "user", "content": "What is 2+2?"}]}, config, durability=durability
            )
            elapsed = time.perf_counter() - started
            if values["messages"][-1].content != "4":
                raise RuntimeError(f"unexpected answer: {values['messages'][-1]}")
            return elapsed

        for _ in range(5):
            await one()
        calls.clear()
        before = _checkpoint_stats(dsn) if mode != "memory" else {}
        cpu0 = time.process_time()
        times = [await one() for _ in range(runs)]
        cpu_s = time.process_time() - cpu0
        after = _checkpoint_stats(dsn) if mode != "memory" else {}
        result: dict[str, Any] = {
            "ms_per_run": 1000 * statistics.median(times),
            "client_cpu_ms_per_run": 1000 * cpu_s / runs,
            "saver_calls_per_run": sum(len(v) for v in calls.values()) / runs,
            "saver_ms_per_run": 1000 * sum(sum(v) for v in calls.values()) / runs,
        }
        for name, values in calls.items():
            result[f"{name}_per_run"] = len(values) / runs
        if after:
            for key in after:
                if key.endswith(("_rows", "_bytes")):
                    result[f"{key}_per_run"] = (after[key] - before[key]) / runs
            result["wal_bytes_per_run"] = (after["wal"] - before["wal"]) / runs
            result["pg_cpu_ms_per_run"] = 1000 * (after["pg_cpu_s"] - before["pg_cpu_s"]) / runs
        return result

    if mode == "memory":
        return await measure(InMemorySaver())
    async with open_checkpointer(database_url) as saver:
        return await measure(saver)


def bench_agents(args: argparse.Namespace, database_url: str) -> dict[str, Any]:
    """Checkpoint rows, bytes and time per run of the react graph on WeLIP's PostgreSQL checkpointer."""
    trials: dict[str, list[dict[str, Any]]] = {mode: [] for mode in AGENT_MODES}
    for repeat in range(args.repeats):
        for mode in AGENT_MODES:
            busy0 = _cpu_busy()
            trial = asyncio.run(_agent_trial(database_url, mode, args.agent_runs))
            trial["box_busy"] = _busy_share(busy0, _cpu_busy())
            trials[mode].append(trial)
            print(f"agents repeat {repeat + 1} {mode}: {trial['ms_per_run']:.2f} ms/run", flush=True)
    summary = {
        mode: {key: _spread([t.get(key, 0.0) for t in runs]) for key in runs[0]}
        for mode, runs in trials.items()
    }
    print(f"\nagents (react graph, one tool call; {args.agent_runs} runs per trial; median (min-max)):")
    print(
        "| checkpointer | ms/run (median) | saver calls/run | ms in saver calls/run | checkpoint rows/run "
        "(checkpoints + writes + blobs) | row bytes/run | disk bytes/run | WAL bytes/run "
        "| PostgreSQL CPU ms/run |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode, s in summary.items():
        rows = [s.get(f"{t}_rows_per_run", {"median": 0})["median"] for t in _CHECKPOINT_TABLES]
        row_bytes = sum(s.get(f"{t}_row_bytes_per_run", {"median": 0})["median"] for t in _CHECKPOINT_TABLES)
        disk = sum(s.get(f"{t}_disk_bytes_per_run", {"median": 0})["median"] for t in _CHECKPOINT_TABLES)
        print(
            f"| {mode} | {_fmt(s['ms_per_run'], 2)} | {s['saver_calls_per_run']['median']:.1f} "
            f"| {_fmt(s['saver_ms_per_run'], 2)} | {sum(rows):.1f} ({' + '.join(f'{r:.1f}' for r in rows)}) "
            f"| {row_bytes:,.0f} | {disk:,.0f} "
            f"| {s.get('wal_bytes_per_run', {'median': 0})['median']:,.0f} "
            f"| {s.get('pg_cpu_ms_per_run', {'median': 0})['median']:.2f} |"
        )
    return {"part": "agents", "runs_per_trial": args.agent_runs, "modes": summary}


_CHECKPOINT_TABLES = ("checkpoints", "checkpoint_writes", "checkpoint_blobs")


# --- the database, arguments, main ---------------------------------------------------------------


def _psycopg_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextlib.contextmanager
def _database(args: argparse.Namespace) -> Iterator[str]:
    """The given database, or a fresh one on ``--admin-url``'s server, migrated; dropped after."""
    import psycopg

    from welip.store import Database

    if args.database_url:
        Database(args.database_url).upgrade()
        yield args.database_url
        return
    name = f"welip_capacity_{os.getpid()}"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = args.admin_url.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    try:
        database = Database(url)
        database.upgrade()
        database.dispose()
        yield url
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["limiter", "audit", "admission", "agents", "all"], default="all")
    parser.add_argument("--seconds", type=float, default=5, help="Length of each timed trial.")
    parser.add_argument(
        "--repeats", type=int, default=3, help="Trials of each configuration (median of them)."
    )
    parser.add_argument(
        "--clients", type=_ints, default=[1, 8, 32, 128], help="limiter: asyncio clients in one process."
    )
    parser.add_argument("--processes", type=_ints, default=[2, 4], help="limiter: client processes, each ...")
    parser.add_argument(
        "--clients-per-process", type=int, default=32, help="limiter: ... with this many clients."
    )
    parser.add_argument(
        "--subjects", type=int, default=1000, help="limiter: distinct keys (principals) used."
    )
    parser.add_argument(
        "--batch-sizes", type=_ints, default=[16, 64, 256, 1024], help="audit: AuditConfig.batch_size values."
    )
    parser.add_argument(
        "--audit-processes", type=_ints, default=[1, 2], help="audit: writer processes at once."
    )
    parser.add_argument(
        "--principals", type=int, default=100, help="audit: distinct principals in the records."
    )
    parser.add_argument("--admission-modes", type=lambda t: t.split(","), default=list(ADMISSION_MODES))
    parser.add_argument("--concurrency", type=int, default=32, help="admission: requests in flight.")
    parser.add_argument(
        "--output-tokens", type=int, default=64, help="admission: streamed tokens per answer."
    )
    parser.add_argument("--agent-runs", type=int, default=50, help="agents: runs per trial.")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument(
        "--prefix", default="welip-capacity", help="Redis key prefix (its keys are deleted after)."
    )
    parser.add_argument(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server to create the fresh database on.",
    )
    parser.add_argument("--database-url", default=None, help="Use this database instead (kept).")
    parser.add_argument(
        "--out", default=None, help="Results JSON (default benchmarks/results/capacity-<stamp>.json)."
    )
    args = parser.parse_args(argv)
    unknown = set(args.admission_modes) - set(ADMISSION_MODES)
    if unknown:
        parser.error(f"unknown admission modes {sorted(unknown)}; choose from {', '.join(ADMISSION_MODES)}")
    if args.repeats < 1 or args.seconds <= 0:
        parser.error("--repeats must be at least 1 and --seconds positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = ["limiter", "audit", "admission", "agents"] if args.part == "all" else [args.part]
    box = {
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "argv": sys.argv[1:],
    }
    results: dict[str, Any] = {"box": box}
    with _database(args) as database_url:
        for part in parts:
            if part == "limiter":
                results[part] = bench_limiter(args)
            elif part == "audit":
                results[part] = bench_audit(args, database_url)
            elif part == "admission":
                results[part] = bench_admission(args, database_url)
            else:
                results[part] = bench_agents(args, database_url)
    box["loadavg_end"] = os.getloadavg()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else RESULTS_DIR / f"capacity-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
