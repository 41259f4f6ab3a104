"""Agents on the session cluster: two replicas of the agents app, the real engine behind the
gateway (their LLM calls carry a service key and their caller's token), PostgreSQL for
threads, runs and checkpoints.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import ray
from ray import serve

from tests.integration.conftest import (
    ADMIN_KEY,
    AGENTS_APP,
    METRICS_PORT,
    REDIS_PREFIX,
    REDIS_URL,
    STORAGE_DIR,
)
from tests.phoenix_server import PhoenixServer, children, named, traceparent, wait_for_trace

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def sse(text: str) -> list[tuple[str, Any]]:
    """SSE frames as (event, data)."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def user_message(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


@pytest.fixture(scope="module")
def agents(base_url: str) -> Iterator[httpx.Client]:
    """The agents API as the admin."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=f"{base_url}/agents", timeout=300, headers=headers) as client:
        yield client


def key_client(base_url: str, http: httpx.Client, role: str) -> httpx.Client:
    key = http.post("/admin/keys", json={"name": f"agents-{role}", "role": role}).json()["key"]
    return httpx.Client(
        base_url=f"{base_url}/agents", timeout=300, headers={"Authorization": f"Bearer {key}"}
    )


@pytest.fixture(scope="module")
def docs_table(base_url: str) -> Path:
    """The shipped documents ingested into the storage the agents app reads (as `make ingest`)."""
    env = {
        **os.environ,
        "WELIP_STORAGE_URL": str(STORAGE_DIR),
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "RAY_AUTH_MODE": "token",
    }
    done = subprocess.run(
        [sys.executable, "jobs/ingest.py", "--config", "configs/rag/welip_docs.yaml"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return STORAGE_DIR


def agent_runs(database_url: str, thread_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT run_id, status, replica FROM agent_runs WHERE thread_id = %s ORDER BY created_at",
            (thread_id,),
        ).fetchall()
    return [{"run_id": r[0], "status": r[1], "replica": r[2]} for r in rows]


def test_rag_agent_streams_an_answer_citing_an_ingested_document(
    agents: httpx.Client, docs_table: Path
) -> None:
    thread = agents.post("/threads", json={"metadata": {"case": "rag"}}).json()
    body = {
        "assistant_id": "welip-docs",
        "input": user_message("How do I create an API key for the WeLIP gateway?"),
        "stream_mode": ["values", "updates", "messages"],
    }
    with agents.stream("POST", f"/threads/{thread['thread_id']}/runs/stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse(response.read().decode())
    kinds = [e for e, _ in events]
    assert kinds[0] == "metadata"
    assert [next(iter(d)) for e, d in events if e == "updates"] == ["retrieve", "generate"]
    tokens = [d[0]["content"] for e, d in events if e == "messages"]
    assert len(tokens) > 3, "the answer streams token by token"
    final = [d for e, d in events if e == "values"][-1]
    citations = final["citations"]
    assert citations and all(c["chunk_id"] and c["source"] for c in citations)
    assert any("key" in (c["source"] + c["title"]).lower() for c in citations), citations
    answer = final["messages"][-1]
    assert answer["type"] == "ai" and "Sources: [" in answer["content"]
    assert "".join(tokens).strip()[:20] in answer["content"]


def test_a_thread_continues_across_replicas_and_a_replica_restart(
    agents: httpx.Client, database_url: str, docs_table: Path
) -> None:
    thread_id = agents.post("/threads", json={}).json()["thread_id"]
    questions = [f"Question {n}: what does WeLIP's gateway do?" for n in range(6)]
    for question in questions:
        body = {"assistant_id": "welip-docs", "input": user_message(question)}
        response = agents.post(f"/threads/{thread_id}/runs/wait", json=body)
        assert response.status_code == 200, response.text
        assert "__error__" not in response.json()
    runs = agent_runs(database_url, thread_id)
    assert [r["status"] for r in runs] == ["success"] * len(questions)
    assert len({r["replica"] for r in runs}) == 2, "both replicas ran runs of the one thread"
    state = agents.get(f"/threads/{thread_id}/state").json()
    humans = [m["content"] for m in state["values"]["messages"] if m["type"] == "human"]
    assert humans == questions

    # Kill a replica: Serve replaces it, and the thread's state outlives it.
    victim = runs[-1]["replica"]
    actor = ray.get_actor(f"SERVE_REPLICA::{AGENTS_APP}#WelipAgents#{victim}", namespace="serve")
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 180
    prefix = f"SERVE_REPLICA::{AGENTS_APP}#WelipAgents#"
    while time.monotonic() < deadline:
        # Serve noticed the loss and a new replica is up in its place.
        names = [n["name"] for n in ray.util.list_named_actors(all_namespaces=True)]
        alive = [n for n in names if n.startswith(prefix)]
        status = serve.status().applications[AGENTS_APP].deployments["WelipAgents"].status
        if len(alive) == 2 and prefix + victim not in alive and status == "HEALTHY":
            break
        time.sleep(1)
    else:
        pytest.fail(f"no replacement replica after killing {victim}")
    time.sleep(3)  # the proxy's routing table follows the controller's
    body = {"assistant_id": "welip-docs", "input": user_message("And the agents?")}
    for _ in range(4):  # requests land on either replica, the new one included
        response = agents.post(f"/threads/{thread_id}/runs/wait", json=body)
        assert response.status_code == 200, response.text
    state = agents.get(f"/threads/{thread_id}/state").json()
    humans = [m["content"] for m in state["values"]["messages"] if m["type"] == "human"]
    assert humans == [*questions, *["And the agents?"] * 4]
    replicas = {r["replica"] for r in agent_runs(database_url, thread_id)}
    assert victim in replicas and len(replicas) >= 3, "a new replica served the thread after the restart"


def test_sensitive_tool_waits_for_approval_then_runs(agents: httpx.Client) -> None:
    thread_id = agents.post("/threads", json={}).json()["thread_id"]
    body = {
        "assistant_id": "tools",
        # The tool the small model picks is its own choice (greedy, so stable); this asks plainly.
        "input": user_message("Create a ticket: printer broken"),
    }
    values = agents.post(f"/threads/{thread_id}/runs/wait", json=body).json()
    assert "__interrupt__" in values, values["messages"][-1]
    question = values["__interrupt__"][0]["value"]
    assert question["tool"] == "create_ticket" and "Allow" in question["question"]
    thread = agents.get(f"/threads/{thread_id}").json()
    assert thread["status"] == "interrupted"
    assert [i["value"]["tool"] for pending in thread["interrupts"].values() for i in pending] == [
        "create_ticket"
    ]

    resume = {"assistant_id": "tools", "command": {"resume": {"approved": True}}}
    values = agents.post(f"/threads/{thread_id}/runs/wait", json=resume).json()
    tool_results = [m["content"] for m in values["messages"] if m["type"] == "tool"]
    assert tool_results and tool_results[0].startswith("created ticket T-")
    assert agents.get(f"/threads/{thread_id}").json()["status"] in ("idle", "interrupted")

    # Resume a thread that waits for nothing: 409.
    fresh = agents.post("/threads", json={}).json()["thread_id"]
    refused = agents.post(f"/threads/{fresh}/runs/wait", json=resume)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "thread_not_interrupted"


def test_reject_answers_409_while_a_run_holds_the_thread_and_enqueue_waits(
    agents: httpx.Client, docs_table: Path
) -> None:
    thread_id = agents.post("/threads", json={}).json()["thread_id"]

    def body(text: str, strategy: str) -> dict[str, Any]:
        return {"assistant_id": "welip-docs", "input": user_message(text), "multitask_strategy": strategy}

    first = agents.post(f"/threads/{thread_id}/runs", json=body("What is WeLIP?", "reject")).json()
    rejected = agents.post(f"/threads/{thread_id}/runs", json=body("Second?", "reject"))
    assert rejected.status_code == 409 and rejected.json()["error"]["code"] == "thread_busy"
    queued = agents.post(f"/threads/{thread_id}/runs", json=body("Second?", "enqueue")).json()
    values = agents.get(f"/threads/{thread_id}/runs/{queued['run_id']}/join").json()
    humans = [m["content"] for m in values["messages"] if m["type"] == "human"]
    assert humans == ["What is WeLIP?", "Second?"]
    for run in (first, queued):
        assert agents.get(f"/runs/{run['run_id']}").json()["status"] == "success"


def test_threads_belong_to_their_principal(base_url: str, http: httpx.Client, agents: httpx.Client) -> None:
    with key_client(base_url, http, "agent-user") as alice, key_client(base_url, http, "agent-user") as bob:
        thread_id = alice.post("/threads", json={}).json()["thread_id"]
        assert alice.get(f"/threads/{thread_id}").status_code == 200
        for method, path in (
            ("GET", f"/threads/{thread_id}"),
            ("GET", f"/threads/{thread_id}/state"),
            ("GET", f"/threads/{thread_id}/history"),
            ("DELETE", f"/threads/{thread_id}"),
        ):
            response = bob.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["code"] == "thread_not_found"
        run = bob.post(
            f"/threads/{thread_id}/runs/wait", json={"assistant_id": "tools", "input": user_message("hi")}
        )
        assert run.status_code == 404
        assert agents.get(f"/threads/{thread_id}").status_code == 404, "the admin is another principal too"
    with key_client(base_url, http, "user") as inference_only:
        refused = inference_only.post("/threads", json={})
        assert refused.status_code == 403
    assert httpx.post(f"{base_url}/agents/threads", json={}).status_code == 401


def test_bad_input_is_named(agents: httpx.Client) -> None:
    thread_id = agents.post("/threads", json={}).json()["thread_id"]
    missing = agents.post(
        "/threads/no-such-thread/runs/wait", json={"assistant_id": "tools", "input": user_message("x")}
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "thread_not_found"
    invalid = agents.post(
        f"/threads/{thread_id}/runs/wait",
        json={"assistant_id": "tools", "input": {"messages": [{"role": "robot", "content": "x"}]}},
    )
    assert invalid.status_code == 422
    assert invalid.json()["error"]["param"] == "input.messages.0.role"


def test_langgraph_sdk_client_creates_a_thread_and_streams_a_run(base_url: str) -> None:
    from langgraph_sdk import get_client

    async def go() -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        client = get_client(url=f"{base_url}/agents", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        thread = await client.threads.create(metadata={"sdk": True})
        parts = [
            part
            async for part in client.runs.stream(
                thread["thread_id"], "tools", input=user_message("What is 12 * 12?"), stream_mode="updates"
            )
        ]
        state = await client.threads.get_state(thread["thread_id"])
        assistants = await client.assistants.search()
        return parts, state, {"assistants": assistants}

    parts, state, extra = asyncio.run(go())
    assert parts[0].event == "metadata"
    updates = [p.data for p in parts if p.event == "updates"]
    assert updates and "agent" in updates[0]
    assert state["values"]["messages"][0]["content"] == "What is 12 * 12?"
    assert {a["assistant_id"] for a in extra["assistants"]} == {"welip-docs", "tools", "orders"}


def test_agent_runs_are_audited_and_counted(agents: httpx.Client, http: httpx.Client) -> None:
    thread_id = agents.post("/threads", json={}).json()["thread_id"]
    body = {"assistant_id": "tools", "input": user_message("What time is it in Asia/Seoul?")}
    assert agents.post(f"/threads/{thread_id}/runs/wait", json=body).status_code == 200
    route = f"/agents/threads/{thread_id}/runs/wait"
    deadline = time.monotonic() + 30
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not rows:
        rows = [
            r for r in http.get("/admin/audit", params={"limit": 200}).json()["data"] if r["route"] == route
        ]
        time.sleep(0.5)
    assert rows and rows[0]["model"] == "tools" and rows[0]["status"] == 200
    # The agent's own LLM calls went through the gateway as its caller's (the admin key's),
    # via the agents service.
    keys = http.get("/admin/keys").json()["data"]
    (service,) = [k["id"] for k in keys if k["name"] == "agents-service"]
    audit = http.get("/admin/audit", params={"limit": 500}).json()["data"]
    llm_rows = [r for r in audit if r["route"] == "/v1/chat/completions" and r["via"] == service]
    assert llm_rows and all(r["status"] == 200 for r in llm_rows[:3])
    assert {r["principal"] for r in llm_rows} == {"admin-key"}
    deadline = time.monotonic() + 60
    series: list[str] = []
    while time.monotonic() < deadline:
        lines = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text.splitlines()
        series = [
            line
            for line in lines
            if line.startswith("ray_welip_agent_runs_total{") and 'assistant="tools"' in line
        ]
        if series and any(line.startswith("ray_welip_agent_node_latency_s") for line in lines):
            break
        time.sleep(2)
    assert series and any('status="success"' in line for line in series)


def test_an_agent_run_is_its_callers_own_at_the_gateway_and_refused_once_its_budget_is_spent(
    base_url: str, http: httpx.Client
) -> None:
    import redis

    created = http.post("/admin/keys", json={"name": "agents-caller-a", "role": "agent-user"}).json()
    spent = http.post(
        "/admin/keys", json={"name": "agents-spent", "role": "agent-user", "token_budget": 100_000}
    ).json()
    service = next(k["id"] for k in http.get("/admin/keys").json()["data"] if k["name"] == "agents-service")
    body = {"assistant_id": "tools", "input": user_message("What is 6 * 7?"), "if_not_exists": "create"}
    thread_id = f"caller-{created['id']}"
    with httpx.Client(base_url=f"{base_url}/agents", timeout=300) as agents:
        answered = agents.post(
            f"/threads/{thread_id}/runs/wait",
            json=body,
            headers={"Authorization": f"Bearer {created['key']}"},
        )
        assert answered.status_code == 200 and "__error__" not in answered.json(), answered.text
        # The budget is all but spent (its bucket in Redis, where every replica counts it):
        # a run, whose call asks for up to the agent's max_tokens, is refused before it starts.
        client = redis.Redis.from_url(REDIS_URL)
        client.hset(f"{REDIS_PREFIX}:limit:{spent['id']}:budget", mapping={"v": "10", "ts": "0"})
        client.close()
        refused = agents.post(
            f"/threads/caller-{spent['id']}/runs/wait",
            json=body,
            headers={"Authorization": f"Bearer {spent['key']}"},
        )
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_exceeded" and refused.headers["retry-after"]
    deadline = time.monotonic() + 30
    llm_rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not llm_rows:
        audit = http.get("/admin/audit", params={"limit": 500}).json()["data"]
        llm_rows = [r for r in audit if r["route"] == "/v1/chat/completions" and r["key_id"] == created["id"]]
        time.sleep(0.5)
    assert llm_rows, "the run's LLM calls are audited under its caller"
    assert {(r["principal"], r["via"], r["status"]) for r in llm_rows} == {(created["id"], service, 200)}
    assert not [r for r in audit if r["route"] == "/v1/chat/completions" and r["key_id"] == spent["id"]]


def test_replicas_starting_together_set_up_the_postgresql_checkpointer_once() -> None:
    from welip.agents import open_checkpointer

    admin = "postgresql://postgres@127.0.0.1:5432/test"
    name = f"welip_it_ck_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"

    async def one() -> int:
        async with open_checkpointer(url) as saver:
            async with saver.conn.connection() as conn:  # type: ignore[union-attr]
                shown = await (await conn.execute("SHOW statement_timeout")).fetchone()
            assert shown == {"statement_timeout": "5s"}  # bounded like every WeLIP connection
            await saver.aput(
                {"configurable": {"thread_id": "t", "checkpoint_ns": ""}},
                {
                    "v": 1,
                    "id": f"1ef{os.getpid():x}",
                    "ts": "2026-01-01T00:00:00+00:00",
                    "channel_values": {},
                    "channel_versions": {},
                    "versions_seen": {},
                },
                {},
                {},
            )
            return 1

    try:
        # Three at once, as replicas start: none blocks the others' migrations.
        async def together() -> list[int]:
            return await asyncio.wait_for(asyncio.gather(one(), one(), one()), 60)

        assert asyncio.run(together()) == [1, 1, 1]
        with psycopg.connect(url) as conn:
            (versions,) = conn.execute(
                "SELECT count(DISTINCT v) = count(*) FROM checkpoint_migrations"
            ).fetchone()
            assert versions, "every migration ran once"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_an_agent_run_is_one_trace_from_the_request_to_the_engine(
    agents: httpx.Client, docs_table: Path, phoenix: PhoenixServer
) -> None:
    thread = agents.post("/threads", json={}).json()
    trace_id, caller, header = traceparent()
    body = {"assistant_id": "welip-docs", "input": user_message("How do I revoke an API key?")}
    response = agents.post(f"/threads/{thread['thread_id']}/runs/wait", json=body, headers=header)
    assert response.status_code == 200, response.text

    def complete(spans: list[dict[str, Any]]) -> bool:
        return bool(named(spans, "agent.run welip-docs") and len(named(spans, "vllm.chat")) >= 1)

    spans = wait_for_trace(phoenix, trace_id, complete)
    (request,) = [s for s in named(spans, "welip.gateway.request") if s["parent_id"] == caller]
    (run,) = named(spans, "agent.run welip-docs")
    assert run["span_kind"] == "AGENT" and run["attributes"]["session.id"] == thread["thread_id"]
    ancestors = {s["span_id"]: s["parent_id"] for s in spans}
    node = run["parent_id"]
    while node is not None and node != request["span_id"]:
        node = ancestors.get(node)
    assert node == request["span_id"], "the run span hangs under the agents request span"
    nodes = {s["name"]: s for s in children(spans, run)}
    assert {"welip-docs.retrieve", "welip-docs.generate"} <= set(nodes)
    assert nodes["welip-docs.retrieve"]["span_kind"] == "RETRIEVER"
    # The node's model call -> the gateway's request span (over HTTP) -> the engine's LLM span.
    (llm,) = children(spans, nodes["welip-docs.generate"], "llm.chat")
    (gateway,) = children(spans, llm, "welip.gateway.request")
    (engine,) = children(spans, gateway, "vllm.chat")
    assert engine["span_kind"] == "LLM" and engine["attributes"]["llm.token_count.completion"] > 0
    # The retriever's question embedding went through the gateway too, in the same trace.
    embedded = [s for s in named(spans, "embeddings") if s["span_kind"] == "EMBEDDING"]
    assert embedded
