"""Agents and RAG benchmarks. Part ``runs``: per-run overhead of a served agent against the same
graph in-process. Part ``ingest``: RAG ingestion, WeLIP's Ray Data job against a plain loop.

    python benchmarks/agents.py                               # every part: runs, then ingest
    python benchmarks/agents.py --part runs --rounds 4 --runs-per-round 50
    python benchmarks/agents.py --part ingest --copies 30 --repeats 2
    python benchmarks/agents.py --part ingest --dry-run       # print the corpus size and commands
    python benchmarks/agents.py --part store --store-items 1000  # the /store API over PostgreSQL

``ingest``: the shipped documents (``data/docs``) replicated ``--copies`` times into a
temporary folder, each copy in its own sub-folder with one line of its own appended to
every markdown and text file, so no two documents share a content hash. Both sides read,
chunk, embed and write the same documents with the same settings (``configs/rag/welip_docs.yaml``:
chunk size, overlap, embedding model, batch size) into a fresh LanceDB table, and build its
full-text index:

* ``welip``: ``welip.rag.ingest(cfg)`` (what ``jobs/ingest.py`` runs) in a fresh process on a
  private local Ray (``ray.init(address="local", num_cpus=8)``, as ``make run`` starts one; its own
  ``RAY_TMPDIR``), so it neither joins nor disturbs a cluster someone else runs here. Ray Data
  reads and chunks with ``flat_map`` tasks and embeds on ``embed_concurrency`` actors of
  ``embed_num_cpus`` each (torch then runs one thread per actor); the driver adds the rows.
  Ray's start-up is outside the time (a running cluster is the job's normal case); starting
  the embedding actors (importing torch, loading the model) is inside it.
* ``plain``: this file run as ``--plain SPEC`` in a fresh process: ``list_documents``, then per
  document ``read_chunks``, ``Embedder.embed`` per ``batch_size`` chunks (torch with its default
  threads: every core), ``VectorStore.add`` every 4096 rows, ``reindex`` at the end. Importing
  the model's libraries and loading the model are inside the time, as for the job's actors.

Documents/s = documents / that time. The sides alternate (plain, welip, plain, welip, ...)
and each table is fresh; the medians and their ratio are reported, with the share of the
CPUs that processes outside the run used while it ran (the box may be shared: only runs on
a quiet box compare). Output: a table; ``benchmarks/results/agents-ingest-<stamp>.json``
and the runs' logs in ``benchmarks/results/agents-ingest-<stamp>/``.

Parts are functions ``bench_<part>(args) -> dict`` listed in ``PARTS``; a new part adds its line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
DOCS = REPO / "data" / "docs"
INGEST_CONFIG = REPO / "configs" / "rag" / "welip_docs.yaml"
RESULT = "BENCH_RESULT "
RUN_TIMEOUT_S = 1800
ADD_BATCH_ROWS = 4096  # as welip.rag.ingest
SIDES = ("plain", "welip")


# --- the two sides, each in a fresh process -----------------------------------------------


def plain_ingest(spec_path: str) -> None:
    """The anchor: a single-process loop doing what the job does; prints one result line."""
    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    import pyarrow as pa

    from welip.rag import VectorStore, embed_chunks, list_documents, read_chunks
    from welip.serving import Embedder

    embedder = Embedder.load(spec["embedding_source"])
    store = VectorStore.open(spec["table"], spec["storage_url"])
    documents = list_documents(spec["documents"], spec["include"])
    known = store.content_hashes()
    pending: list[dict[str, Any]] = []
    embedded: list[pa.Table] = []
    chunks = added = 0

    def embed(rows: list[dict[str, Any]]) -> None:
        batch = pa.Table.from_pylist(rows)
        embedded.append(embed_chunks(embedder, batch, spec["embedding_model_id"]))

    for document in documents:
        rows = read_chunks(
            document,
            chunk_size_chars=spec["chunk_size_chars"],
            chunk_overlap_chars=spec["chunk_overlap_chars"],
        )
        new = [r for r in rows if not r["error"] and r["content_hash"] not in known]
        chunks += len(new)
        pending.extend(new)
        while len(pending) >= spec["batch_size"]:
            embed(pending[: spec["batch_size"]])
            del pending[: spec["batch_size"]]
        if sum(t.num_rows for t in embedded) >= ADD_BATCH_ROWS:
            added += store.add(pa.concat_tables(embedded), reindex=False)
            embedded.clear()
    if pending:
        embed(pending)
    if embedded:
        added += store.add(pa.concat_tables(embedded), reindex=False)
    store.reindex()
    elapsed_s = time.perf_counter() - started
    result = {"documents": len(documents), "chunks": chunks, "rows": added, "elapsed_s": elapsed_s}
    print(RESULT + json.dumps(result), flush=True)


def welip_ingest(spec_path: str) -> None:
    """WeLIP's job: ``welip.rag.ingest`` (what ``jobs/ingest.py`` runs) on a private local Ray;
    prints one result line."""
    import ray

    from welip.config import load_config
    from welip.rag import IngestConfig, ingest

    spec = json.loads(Path(spec_path).read_text())
    cfg = load_config(IngestConfig, spec["config"], spec["overrides"])
    ray.init(address="local", num_cpus=8, include_dashboard=False)
    summary = ingest(cfg)
    result = {
        "documents": summary["documents"],
        "chunks": summary["chunks"],
        "rows": summary["new_chunks"],
        "elapsed_s": summary["elapsed_s"],
    }
    print(RESULT + json.dumps(result), flush=True)
    ray.shutdown()


# --- driver -------------------------------------------------------------------------------------


def make_corpus(root: Path, copies: int) -> int:
    """``copies`` copies of the shipped documents under ``root``; returns how many documents."""
    count = 0
    for copy in range(copies):
        folder = root / f"copy-{copy:03d}"
        folder.mkdir(parents=True)
        for path in sorted(DOCS.iterdir()):
            data = path.read_bytes()
            if path.suffix in (".md", ".txt"):
                data += f"\n\nThis is copy {copy} of {path.name}, made by the ingestion benchmark.\n".encode()
            (folder / path.name).write_bytes(data)
            count += 1
    return count


def run_side(side: str, spec: dict[str, Any], scratch: Path, log_path: Path) -> dict[str, Any]:
    """One run in a fresh process; its result line, wall time and how busy the rest of the box was."""
    import psutil

    spec_path = scratch / f"{log_path.stem}.json"
    spec_path.write_text(json.dumps(spec))
    argv = [sys.executable, str(Path(__file__).resolve()), f"--{side}", str(spec_path)]
    env = {**os.environ, "RAY_TMPDIR": str(scratch / "ray"), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    (scratch / "ray").mkdir(exist_ok=True)
    busy_before = _busy_cpu_s()
    ours: dict[int, float] = {}
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        root = psutil.Process(proc.pid)
        stop = threading.Event()

        def sample() -> None:  # CPU seconds of our process tree, to tell the box's other load apart
            while not stop.wait(1.0):
                with contextlib.suppress(psutil.Error):
                    for p in [root, *root.children(recursive=True)]:
                        with contextlib.suppress(psutil.Error):
                            cpu = p.cpu_times()
                            ours[p.pid] = cpu.user + cpu.system + cpu.children_user + cpu.children_system

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            proc.wait(RUN_TIMEOUT_S)
        finally:
            stop.set()
            sampler.join()
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
    wall_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{side}: exited with {proc.returncode}; see {log_path}")
    lines = [line for line in log_path.read_text().splitlines() if line.startswith(RESULT)]
    if not lines:
        raise RuntimeError(f"{side}: no result line; see {log_path}")
    result = json.loads(lines[-1].removeprefix(RESULT))
    others_s = _busy_cpu_s() - busy_before - sum(ours.values())
    result.update(
        side=side,
        wall_s=round(wall_s, 2),
        documents_per_s=result["documents"] / result["elapsed_s"],
        others_cpu_share=round(max(0.0, others_s) / (wall_s * (os.cpu_count() or 1)), 3),
    )
    return result


def _busy_cpu_s() -> float:
    import psutil

    times = psutil.cpu_times()._asdict()
    return float(sum(v for k, v in times.items() if k not in ("idle", "iowait", "guest", "guest_nice")))


def bench_ingest(args: argparse.Namespace) -> dict[str, Any]:
    """Documents/s of ``jobs/ingest.py`` (Ray Data) and of a plain loop, alternating; medians and ratio."""
    from welip.config import load_config
    from welip.rag import IngestConfig

    cfg = load_config(IngestConfig, INGEST_CONFIG, args.override)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = RESULTS_DIR / f"agents-ingest-{stamp}"
    scratch = Path(tempfile.mkdtemp(prefix="welip-bench-ingest-"))
    try:
        documents = make_corpus(scratch / "docs", args.copies)
        print(
            f"corpus: {documents} documents ({args.copies} copies of {DOCS.relative_to(REPO)}) in {scratch}"
        )
        order = [side for _ in range(args.repeats) for side in SIDES]
        if args.dry_run:
            print("runs:", ", ".join(order), "; each side in a fresh process (--plain/--welip SPEC)")
            return {}
        logs.mkdir(parents=True, exist_ok=True)
        runs = []
        for i, side in enumerate(order):
            table_url = str(scratch / f"rag-{i}")  # a fresh table every run
            overrides = [*args.override, f"documents={scratch / 'docs'}", f"storage_url={table_url}"]
            spec: dict[str, Any] = (
                {"config": str(INGEST_CONFIG), "overrides": overrides}
                if side == "welip"
                else {
                    **load_config(IngestConfig, INGEST_CONFIG, overrides).model_dump(),
                    "documents": str(scratch / "docs"),
                    "storage_url": table_url,
                }
            )
            result = run_side(side, spec, scratch, logs / f"{i:02d}-{side}.log")
            shutil.rmtree(table_url, ignore_errors=True)
            runs.append(result)
            r = result
            print(
                f"  {side:5s} {r['documents']} docs, {r['rows']} chunks in {r['elapsed_s']:.1f} s:"
                f" {r['documents_per_s']:.2f} docs/s (others used {r['others_cpu_share']:.0%} of the CPUs)",
                flush=True,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    medians = {side: median(r["documents_per_s"] for r in runs if r["side"] == side) for side in SIDES}
    summary = {
        "part": "ingest",
        "documents": documents,
        "copies": args.copies,
        "config": {
            k: getattr(cfg, k)
            for k in (
                "chunk_size_chars",
                "chunk_overlap_chars",
                "batch_size",
                "embed_concurrency",
                "embed_num_cpus",
            )
        },
        "cpus": os.cpu_count(),
        "runs": runs,
        "median_documents_per_s": medians,
        "ratio_welip_over_plain": medians["welip"] / medians["plain"],
        "logs": str(logs),
    }
    print()
    print("side   docs/s (median)  runs")
    print("-----  ---------------  ----")
    for side in SIDES:
        each = ", ".join(f"{r['documents_per_s']:.2f}" for r in runs if r["side"] == side)
        print(f"{side:5s}  {medians[side]:15.2f}  {each}")
    print(f"welip / plain: {summary['ratio_welip_over_plain']:.2f}x (target >= 1.5x)")
    return summary


# --- part runs: per-run overhead of the served agent ---------------------------------------

FAKE_LLM = """
import json, time
from fastapi import FastAPI, Request
app = FastAPI()
ANSWER = json.dumps({"thought": "", "action": "final_answer", "action_input": "ok"})

@app.post("/v1/chat/completions")
async def chat(request: Request):
    await request.body()
    return {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": "fake",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": ANSWER}}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 3),
        "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
        "mean_ms": round(1000 * sum(ordered) / len(ordered), 3),
    }


def bench_runs(args: argparse.Namespace) -> dict[str, Any]:
    """Per-run latency: the agent served (HTTP, Serve, trust middleware, run bookkeeping) vs in-process.

    Both sides run the same compiled graph (``react``, one LLM call that answers at once)
    against the same fake OpenAI endpoint (its own process) and the same kind of
    checkpointer on the same database, one run at a time, a new thread per run. The
    served side is timed around ``POST /threads/{id}/runs/wait`` (thread creation apart);
    the in-process side around ``graph.ainvoke``. Rounds alternate in blocks.
    """
    import asyncio

    import httpx
    import ray
    import uvicorn  # noqa: F401 - the fake endpoint's server, checked before starting it
    from ray import serve

    if args.dry_run:
        print("runs: in-process graph vs served runs/wait, alternating blocks, fake LLM in its own process")
        return {}
    database_url, drop = _bench_database(args.database_url)
    scratch = Path(tempfile.mkdtemp(prefix="welip-bench-agents-"))
    (scratch / "fake_llm.py").write_text(FAKE_LLM)
    llm_port, serve_port = _free_port(), _free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "fake_llm:app", "--port", str(llm_port), "--log-level", "warning"],
        cwd=scratch,
    )
    agent = {
        "assistant_id": "bench",
        "name": "bench",
        "graph": "react",
        "tools": ["calculator"],
        "llm": {"base_url": f"http://127.0.0.1:{llm_port}/v1", "model": "fake", "api_key_env": None},
    }
    os.environ["WELIP_DATABASE_URL"] = database_url
    rounds, per_round = args.rounds, args.runs_per_round
    served: list[float] = []
    local: list[float] = []
    try:
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"http://127.0.0.1:{llm_port}/v1/chat/completions", json={}, timeout=1)
                break
            time.sleep(0.1)
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        from deployments.agents import build_app

        app_args = {"agents": [agent], "num_cpus": 0.1, "env_vars": {"WELIP_DATABASE_URL": database_url}}
        serve.run(build_app(app_args), name="agents", route_prefix="/agents")

        async def measure() -> None:
            from welip.agents import AgentConfig, compile_graphs, open_checkpointer

            base = f"http://127.0.0.1:{serve_port}/agents"
            body = {"assistant_id": "bench", "input": {"messages": [{"role": "user", "content": "hi"}]}}
            async with (
                httpx.AsyncClient(base_url=base, timeout=60) as client,
                open_checkpointer(database_url) as checkpointer,
            ):
                graph = compile_graphs([AgentConfig.model_validate(agent)], checkpointer)["bench"]

                async def one_served() -> float:
                    thread = (await client.post("/threads", json={})).json()["thread_id"]
                    started = time.perf_counter()
                    response = await client.post(f"/threads/{thread}/runs/wait", json=body)
                    elapsed = time.perf_counter() - started
                    assert response.status_code == 200 and "__error__" not in response.json(), response.text
                    return elapsed

                async def one_local() -> float:
                    config = {"configurable": {"thread_id": f"local-{time.perf_counter_ns()}"}}
                    started = time.perf_counter()
                    values = await graph.ainvoke(body["input"], config)
                    elapsed = time.perf_counter() - started
                    assert values["messages"][-1].content == "ok"
                    return elapsed

                for _ in range(args.warmup):  # connections, caches, JIT-free but lazy imports
                    await one_served()
                    await one_local()
                for _ in range(rounds):
                    local.extend([await one_local() for _ in range(per_round)])
                    served.extend([await one_served() for _ in range(per_round)])

        asyncio.run(measure())
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
            ray.shutdown()
        fake.send_signal(signal.SIGTERM)
        fake.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
        drop()
    local_stats, served_stats = _percentiles(local), _percentiles(served)
    result = {
        "part": "runs",
        "database": database_url.split("://", 1)[0],
        "runs_per_side": len(local),
        "in_process": local_stats,
        "served": served_stats,
        "overhead_p50_ms": round(served_stats["p50_ms"] - local_stats["p50_ms"], 3),
        "overhead_p95_ms": round(served_stats["p95_ms"] - local_stats["p95_ms"], 3),
        "target_overhead_p50_ms": 15,
    }
    print(f"\nruns ({result['runs_per_side']} per side, {result['database']}):")
    print("| side | p50 ms | p95 ms | mean ms |\n| --- | --- | --- | --- |")
    for label, stats in (("in-process graph", local_stats), ("served (runs/wait)", served_stats)):
        print(f"| {label} | {stats['p50_ms']} | {stats['p95_ms']} | {stats['mean_ms']} |")
    print(
        f"overhead: p50 {result['overhead_p50_ms']} ms, p95 {result['overhead_p95_ms']} ms"
        " (target p50 <= 15 ms)"
    )
    return result


def _bench_database(url: str | None) -> tuple[str, Callable[[], None]]:
    """The given database, or a fresh PostgreSQL database on this machine (dropped after)."""
    if url:
        return url, lambda: None
    import psycopg

    admin = "postgresql://postgres@127.0.0.1:5432/test"
    name = f"welip_bench_agents_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"postgresql://postgres@127.0.0.1:5432/{name}", drop


def bench_store(args: argparse.Namespace) -> dict[str, Any]:
    """The ``/store`` API over PostgreSQL: put, get and search latency with ``--store-items`` items.

    In-process, no Ray: the agents app with the store router over httpx's ASGI transport (routing,
    JSON, bounds, the database thread), one request at a time, one principal holding every item.
    Each item has a 384-dimension vector (all-MiniLM-L6-v2's size); the embedder returns random
    vectors at once, so the figures leave out the embeddings call (the gateway's, measured in
    tests/integration/test_agents_store.py). A search with a query ranks every item under the
    prefix: the replica reads their vectors (float32 ``bytea``) and computes the cosines (numpy).
    """
    import asyncio
    import random

    import httpx
    from fastapi import Request

    from welip.agents import (
        AgentRuntime,
        AgentsConfig,
        ItemStore,
        StoreConfig,
        build_agents_app,
        build_store_router,
        load_agent_config,
    )
    from welip.store import Database

    n, searches = args.store_items, args.store_searches
    if args.dry_run:
        print(f"store: {n} items, {searches} searches of each kind")
        return {}
    rng = random.Random(7)

    class RandomEmbeddings:
        async def embed(self, texts: list[str]) -> list[list[float]]:
            return [[rng.gauss(0, 1) for _ in range(384)] for _ in texts]

    url, drop = _bench_database(args.database_url)
    database = Database(url)
    try:
        database.upgrade()
        config = StoreConfig(max_items_per_owner=max(n, 1))
        items = ItemStore(database, config, embeddings=RandomEmbeddings())
        agent = load_agent_config(REPO / "configs" / "agents" / "tools_react.yaml")
        runtime = AgentRuntime({}, {}, None, None, AgentsConfig(agents=[agent]))  # type: ignore[arg-type]

        def owner(request: Request) -> str:
            return "bench"

        app = build_agents_app(runtime, owner, store_router=build_store_router(items, owner))

        async def timed(client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> float:
            started = time.perf_counter()
            response = await client.request(method, path, **kw)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            return elapsed

        async def go() -> dict[str, Any]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://agents") as client:
                puts = [
                    await timed(
                        client,
                        "PUT",
                        "/store/items",
                        json={
                            "namespace": ["memories", f"topic{i % 10}"],
                            "key": f"k{i}",
                            "value": {"text": f"memory number {i}", "kind": f"kind{i % 4}", "n": i},
                        },
                    )
                    for i in range(n)
                ]
                kinds: dict[str, Callable[[int], tuple[str, str, dict[str, Any]]]] = {
                    "get": lambda i: (
                        "GET",
                        "/store/items",
                        {"params": {"namespace": "memories.topic1", "key": "k1"}},
                    ),
                    "search_query": lambda i: (
                        "POST",
                        "/store/items/search",
                        {"json": {"namespace_prefix": ["memories"], "query": f"query {i}", "limit": 10}},
                    ),
                    "search_query_filter": lambda i: (
                        "POST",
                        "/store/items/search",
                        {
                            "json": {
                                "namespace_prefix": ["memories"],
                                "query": "q",
                                "filter": {"kind": "kind1"},
                            }
                        },
                    ),
                    "search_filter": lambda i: (
                        "POST",
                        "/store/items/search",
                        {"json": {"namespace_prefix": ["memories"], "filter": {"kind": "kind2"}}},
                    ),
                    "search_newest": lambda i: (
                        "POST",
                        "/store/items/search",
                        {"json": {"namespace_prefix": ["memories"], "limit": 10}},
                    ),
                }
                result: dict[str, Any] = {"items": n, "put": _percentiles(puts)}
                for name, request in kinds.items():
                    times = []
                    for i in range(searches):
                        method, path, kw = request(i)
                        times.append(await timed(client, method, path, **kw))
                    result[name] = _percentiles(times)
                return result

        result = asyncio.run(go())
    finally:
        database.dispose()
        drop()
    rows = [(name, v["p50_ms"], v["p95_ms"]) for name, v in result.items() if isinstance(v, dict)]
    print(f"store, {n} items (latency in ms):")
    for name, p50, p95 in rows:
        print(f"  {name:<22} p50 {p50:>8.2f}   p95 {p95:>8.2f}")
    return result


# Each part of the benchmark: a function of the parsed arguments; `all` runs them in this order.
PARTS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "runs": bench_runs,
    "ingest": bench_ingest,
    "store": bench_store,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all", help="Which benchmark to run.")
    parser.add_argument("--copies", type=int, default=30, help="ingest: copies of data/docs in the corpus.")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each side, alternating.")
    parser.add_argument(
        "--override", action="append", default=[], help="ingest: key=value for configs/rag/welip_docs.yaml."
    )
    parser.add_argument("--rounds", type=int, default=4, help="runs: alternating blocks per side.")
    parser.add_argument("--runs-per-round", type=int, default=50, help="runs: agent runs per block.")
    parser.add_argument("--warmup", type=int, default=20, help="runs: untimed runs per side first.")
    parser.add_argument(
        "--database-url", default=None, help="runs: database (default: a fresh PostgreSQL database here)."
    )
    parser.add_argument("--store-items", type=int, default=1000, help="store: items the principal holds.")
    parser.add_argument("--store-searches", type=int, default=100, help="store: requests of each kind.")
    parser.add_argument("--out", default=None, help="Results JSON (default benchmarks/results/...).")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--plain", metavar="SPEC", help=argparse.SUPPRESS)  # the plain loop, in a child
    parser.add_argument("--welip", metavar="SPEC", help=argparse.SUPPRESS)  # the job, in a child
    args = parser.parse_args(argv)
    if args.copies < 1 or args.repeats < 1:
        parser.error("--copies and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plain:
        plain_ingest(args.plain)
        return 0
    if args.welip:
        welip_ingest(args.welip)
        return 0
    parts = list(PARTS) if args.part == "all" else [args.part]
    results = {part: PARTS[part](args) for part in parts}
    if args.dry_run:
        return 0
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = "-".join(parts)
    out = Path(args.out) if args.out else RESULTS_DIR / f"agents-{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
