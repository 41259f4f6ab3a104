"""Repeated traffic: WeLIP all-on with the response cache vs bare vLLM, on a load with exact repeats.

    python benchmarks/cache.py                       # 3 alternating starts each, 30 % repeats
    python benchmarks/cache.py --rounds 1 --prompts 64   # smoke
    python benchmarks/cache.py --dry-run

The load: ``--prompts`` non-streamed, greedy chat requests at ``--concurrency``, of which
``--repeat-share`` repeat, word for word, a request sent earlier in the same run (as agents,
RAG and evaluation re-runs do); each answer is ``--output-len`` tokens (``ignore_eos``).
Every run draws new prompts, so no run is answered from an earlier run's cache. Each start
of a server gets one discarded warm-up run and ``--runs`` measured runs; servers alternate
(``bare``, ``welip-cache``) for ``--rounds`` starts each.

``welip-cache`` is ``--secure-config`` (auth, limits, audit, guardrails on; Redis and
PostgreSQL from ``WELIP_REDIS_URL`` / ``WELIP_DATABASE_URL``) with ``cache.enabled`` added;
repeats are answered from Redis, or share the first request's generation while it still
runs (``x-welip-cache: coalesced``). Output tokens per second count every answer's
``usage.completion_tokens``, cached or not: what the caller receives. Servers are started
as ``benchmarks/serve.py`` starts them (its helpers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import (  # benchmarks/serve.py: starts and stops the servers
    CHAT_ROUTE,
    RESULTS_DIR,
    BenchmarkError,
    Server,
    bare_server,
    check_machine_is_free,
    create_bench_key,
    load_serving,
    running,
    welip_server,
)

from welip.models import resolve_model_path

REPO = Path(__file__).resolve().parent.parent
SERVERS = ("bare", "welip-cache")
REQUEST_TIMEOUT_S = 600
_WORDS = (
    "cluster",
    "replica",
    "engine",
    "token",
    "gateway",
    "request",
    "budget",
    "audit",
    "cache",
    "model",
    "adapter",
    "prompt",
    "answer",
    "latency",
    "throughput",
    "window",
    "shard",
    "queue",
    "region",
    "tenant",
    "policy",
    "metric",
    "trace",
    "span",
    "batch",
    "job",
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    serving, base_url = load_serving(args.secure_config)
    model = serving.models[0]
    model_dir = resolve_model_path(model.source)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work_dir = RESULTS_DIR / f"cache-{stamp}"
    cache_config = work_dir / "secure-cache.yaml"
    servers = {
        "bare": bare_server(model, model_dir),
        "welip-cache": welip_server("welip-cache", cache_config, base_url, {}, {"OPENAI_API_KEY": ""}),
    }
    plan = [(servers[name], round_no) for round_no in range(1, args.rounds + 1) for name in SERVERS]
    if args.dry_run:
        for server, round_no in plan:
            print(f"round {round_no}: {server.name}: {server.serve.shell()}")
        return 0
    check_machine_is_free(list(servers.values()))
    work_dir.mkdir(parents=True)
    write_cache_config(args.secure_config, cache_config)
    _, key = create_bench_key(servers["welip-cache"])
    rng = random.Random(args.seed)
    runs: list[dict[str, Any]] = []
    error = None
    try:
        for server, round_no in plan:
            with running(server, work_dir):
                for run in range(args.runs + 1):
                    bodies = make_load(rng, model.model_id, args)
                    token = key if server.name == "welip-cache" else None
                    result = asyncio.run(send_load(server, bodies, args.concurrency, token))
                    result |= {"server": server.name, "round": round_no, "run": run, "warmup": run == 0}
                    runs.append(result)
                    print(
                        f"{server.name} round {round_no} {'warm-up' if run == 0 else f'run {run}'}: "
                        f"{result['output_tok_s']:.1f} out tok/s, {result['ok']} ok / {result['failed']} "
                        f"failed, cache {result['cache']}, {result['duration_s']:.1f} s"
                    )
    except BenchmarkError as exc:
        error = str(exc)
    summary = summarize(runs)
    print(json.dumps(summary, indent=2))
    out = RESULTS_DIR / f"cache-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "args": vars(args) | {"secure_config": str(args.secure_config)},
                "runs": runs,
                "summary": summary,
                "error": error,
            },
            indent=2,
        )
    )
    print(f"results: {out}")
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=192, help="Requests per run.")
    parser.add_argument("--repeat-share", type=float, default=0.3, help="Share of requests that repeat one.")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--input-words", type=int, default=96, help="Words per prompt (~1.3 tokens each).")
    parser.add_argument("--output-len", type=int, default=64, help="Tokens per answer.")
    parser.add_argument("--runs", type=int, default=1, help="Measured runs per start (after one warm-up).")
    parser.add_argument("--rounds", type=int, default=3, help="Starts of each server, alternating.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--secure-config", type=Path, default=REPO / "configs/serve/local-secure.yaml")
    parser.add_argument("--dry-run", action="store_true", help="Print the plan, start nothing.")
    args = parser.parse_args(argv)
    if not 0 <= args.repeat_share < 1 or args.prompts < 2:
        parser.error("--repeat-share must be in [0, 1) and --prompts at least 2")
    return args


def write_cache_config(source: Path, target: Path) -> None:
    """``source`` with the gateway's response cache on."""
    doc = yaml.safe_load(source.read_text())
    gateway = doc["applications"][0]["args"].setdefault("gateway", {})
    gateway["cache"] = {"enabled": True}
    target.write_text(yaml.safe_dump(doc, sort_keys=False))


def make_load(rng: random.Random, model_id: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``args.prompts`` request bodies; ``repeat_share`` of them repeat an earlier one exactly."""
    salt = rng.getrandbits(64)
    unique = max(1, round(args.prompts * (1 - args.repeat_share)))
    prompts = [f"{salt}-{i}: " + " ".join(rng.choices(_WORDS, k=args.input_words)) for i in range(unique)]
    order = list(range(unique))
    for _ in range(args.prompts - unique):
        # A repeat comes after its first sending, at a random later place.
        first = rng.randrange(unique)
        order.insert(rng.randint(order.index(first) + 1, len(order)), first)
    return [
        {
            "model": model_id,
            "messages": [{"role": "user", "content": prompts[i]}],
            "temperature": 0,
            "max_tokens": args.output_len,
            "ignore_eos": True,
        }
        for i in order
    ]


async def send_load(
    server: Server, bodies: list[dict[str, Any]], concurrency: int, key: str | None
) -> dict[str, Any]:
    """Send ``bodies`` in order, ``concurrency`` at a time; output tokens per second and cache results."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    gate = asyncio.Semaphore(concurrency)
    tokens, cache, failed = 0, Counter[str](), 0
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        nonlocal tokens, failed
        async with gate:
            started = time.monotonic()
            response = await client.post(CHAT_ROUTE, json=body, headers=headers)
            latencies.append(time.monotonic() - started)
        if response.status_code != 200:
            failed += 1
            return
        tokens += response.json()["usage"]["completion_tokens"]
        cache[response.headers.get("x-welip-cache", "none")] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as client:
        started = time.monotonic()
        await asyncio.gather(*(one(client, body) for body in bodies))
        duration = time.monotonic() - started
    return {
        "ok": len(bodies) - failed,
        "failed": failed,
        "output_tokens": tokens,
        "duration_s": duration,
        "output_tok_s": tokens / duration,
        "latency_p50_s": statistics.median(latencies),
        "cache": dict(cache),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per server: mean and spread of the measured runs' output tok/s; welip-cache over bare."""
    summary: dict[str, Any] = {}
    for name in SERVERS:
        values = [r["output_tok_s"] for r in runs if r["server"] == name and not r["warmup"]]
        if values:
            summary[name] = {
                "runs": len(values),
                "mean_output_tok_s": statistics.mean(values),
                "min": min(values),
                "max": max(values),
            }
    if "bare" in summary and "welip-cache" in summary:
        summary["ratio_welip_cache_over_bare"] = (
            summary["welip-cache"]["mean_output_tok_s"] / summary["bare"]["mean_output_tok_s"]
        )
    return summary


if __name__ == "__main__":
    sys.exit(main())
