"""The cost of encryption at rest (AES-256-GCM, ``welip.store.Keyring``) per request.

Two measurements, each repeated (``--reps``), plain and encrypted alternating in the same run:

* ``seal``: encrypt + decrypt of one audit body (1 KiB and 8 KiB of request JSON), and the
  encryption of one spool line (a whole record with a 1 KiB body), in microseconds (median).
* ``audit``: audit rows/s through ``AuditStore.write_audit`` (what the audit writer's thread
  does per batch: one transaction, ``usage_daily`` upserts) into a PostgreSQL database made
  for the run and dropped after, with ``--body-bytes`` bodies (``audit.record_prompts`` on),
  without a key and with one; the ratio encrypted / plain per repetition, and its median.

Starts no Ray and no server: it needs the PostgreSQL at ``--admin-url``.

    .venv/bin/python benchmarks/encryption.py                 # 5 repetitions, 5000 rows each
    .venv/bin/python benchmarks/encryption.py --reps 3 --rows 2000
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from welip.store import AuditStore, Database, Keyring

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _body(n_bytes: int) -> str:
    """A chat request of about ``n_bytes`` as the audit log records it."""
    words = "the quick brown fox jumps over the lazy dog and asks about vLLM "
    text = (words * (n_bytes // len(words) + 1))[: max(0, n_bytes - 80)]
    return json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": text}], "max_tokens": 64})


def _record(i: int, body: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "ts": datetime.now(UTC).isoformat(),
        "request_id": f"bench-{i}",
        "principal": f"key_{i % 40}",
        "principal_kind": "api_key",
        "method": "POST",
        "route": "/v1/chat/completions",
        "model": "smollm2",
        "status": 200,
        "prompt_tokens": 200,
        "completion_tokens": 64,
        "latency_ms": 12.5,
        "body": body,
    }


def _median_us(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1000


def bench_seal(keyring: Keyring, reps: int, n: int) -> dict[str, Any]:
    """Median microseconds per encrypt+decrypt of a body, and per sealed spool line."""
    out: dict[str, Any] = {}
    for size in (1024, 8192):
        body = _body(size)
        context = f"audit_log.body:{uuid.uuid4().hex}"
        runs = [
            _median_us(lambda b=body, c=context: keyring.decrypt(keyring.encrypt(b, c), c), n)
            for _ in range(reps)
        ]
        out[f"body_{size // 1024}k_us"] = statistics.median(runs)
    line = json.dumps(_record(0, _body(1024)), separators=(",", ":"))
    out["spool_line_1k_us"] = statistics.median(
        [_median_us(lambda: keyring.encrypt(line, "audit.spool"), n) for _ in range(reps)]
    )
    return out


def _write_rows(
    store: AuditStore, database: Database, rows: int, batch: int, body: str
) -> tuple[float, float]:
    """Rows/s and this process's CPU microseconds per row, writing ``rows`` records in batches of
    ``batch`` into an emptied audit table (CPU time: less noisy than wall time on a shared box)."""
    with database.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE audit_log, usage_daily")
    records = [_record(i, body) for i in range(rows)]
    t0, cpu0 = time.perf_counter(), time.process_time()
    for start in range(0, rows, batch):
        store.write_audit(records[start : start + batch])
    return rows / (time.perf_counter() - t0), (time.process_time() - cpu0) / rows * 1e6


def bench_audit(args: argparse.Namespace, keyring: Keyring) -> dict[str, Any]:
    import psycopg

    name = f"welip_bench_crypto_{secrets.token_hex(4)}"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = args.admin_url.rsplit("/", 1)[0] + f"/{name}"
    database = Database(url)
    try:
        database.upgrade()
        stores = {
            "plain": AuditStore(database, keyring=Keyring()),
            "encrypted": AuditStore(database, keyring=keyring),
        }
        body = _body(args.body_bytes)
        _write_rows(stores["plain"], database, args.batch_size * 4, args.batch_size, body)  # warm up
        runs: list[dict[str, float]] = []
        for rep in range(args.reps):
            order = ["plain", "encrypted"] if rep % 2 == 0 else ["encrypted", "plain"]
            rates: dict[str, float] = {}
            for mode in order:
                rates[mode], rates[f"{mode}_cpu_us_per_row"] = _write_rows(
                    stores[mode], database, args.rows, args.batch_size, body
                )
            rates["ratio"] = rates["encrypted"] / rates["plain"]
            rates["cpu_delta_us_per_row"] = rates["encrypted_cpu_us_per_row"] - rates["plain_cpu_us_per_row"]
            runs.append(rates)
            print(
                f"  rep {rep + 1}: plain {rates['plain']:.0f} rows/s ({rates['plain_cpu_us_per_row']:.0f} us "
                f"CPU/row), encrypted {rates['encrypted']:.0f} rows/s "
                f"({rates['encrypted_cpu_us_per_row']:.0f} us CPU/row), ratio {rates['ratio']:.3f}",
                flush=True,
            )
        with database.engine.connect() as conn:
            sealed = conn.exec_driver_sql(
                "SELECT count(*) FROM audit_log WHERE starts_with(body, 'wlpenc:v1:')"
            ).scalar_one()
        return {
            "rows": args.rows,
            "batch_size": args.batch_size,
            "body_bytes": len(body),
            "runs": runs,
            "median_plain_rows_s": statistics.median(r["plain"] for r in runs),
            "median_encrypted_rows_s": statistics.median(r["encrypted"] for r in runs),
            "median_ratio": statistics.median(r["ratio"] for r in runs),
            "min_ratio": min(r["ratio"] for r in runs),
            "max_ratio": max(r["ratio"] for r in runs),
            "median_cpu_delta_us_per_row": statistics.median(r["cpu_delta_us_per_row"] for r in runs),
            "last_table_sealed_rows": sealed,
        }
    finally:
        database.dispose()
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--admin-url", default=ADMIN_URL, help="PostgreSQL to create the scratch database on."
    )
    parser.add_argument("--reps", type=int, default=5, help="Repetitions of each measurement.")
    parser.add_argument("--rows", type=int, default=5000, help="Audit rows per mode and repetition.")
    parser.add_argument("--batch-size", type=int, default=256, help="Rows per write (audit.batch_size).")
    parser.add_argument("--body-bytes", type=int, default=1024, help="Recorded request body size.")
    parser.add_argument("--seal-iterations", type=int, default=2000, help="Calls per seal timing.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    keyring, _ = Keyring.generate("bench")
    print("seal (median us per call):", flush=True)
    seal = bench_seal(keyring, args.reps, args.seal_iterations)
    for name, value in seal.items():
        print(f"  {name}: {value:.1f}")
    print(f"audit writes to PostgreSQL ({args.rows} rows, batches of {args.batch_size}):", flush=True)
    audit = bench_audit(args, keyring)
    print(
        f"  median: plain {audit['median_plain_rows_s']:.0f} rows/s, encrypted "
        f"{audit['median_encrypted_rows_s']:.0f} rows/s, ratio {audit['median_ratio']:.3f} "
        f"(min {audit['min_ratio']:.3f}, max {audit['max_ratio']:.3f}); CPU per row, encrypted - plain: "
        f"{audit['median_cpu_delta_us_per_row']:.1f} us"
    )
    if args.json:
        args.json.write_text(json.dumps({"seal": seal, "audit": audit}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
