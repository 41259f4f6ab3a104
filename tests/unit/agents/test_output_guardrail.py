"""The caller's output guardrail on everything the agents API returns: values, runs, state, events.

The RAG graph puts retrieved text in the thread's state; the trust layer's output
guardrail (``trust.guardrails.output``, per role) applies to it as to a model's answer.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from deployments.agents import CallerOutputGuard
from tests.unit.agents.test_api import RAG, REACT, Chunk, fake, run, sse
from tests.unit.trust.test_guardrail_checks import FakeJudge, judge  # noqa: F401 - the fixture
from welip.agents import (
    AgentRuntime,
    AgentsConfig,
    AgentStore,
    build_agents_app,
    build_rag_graph,
    open_checkpointer,
)
from welip.store import Database
from welip.trust import Trust, TrustConfig, TrustMiddleware, principal_of

RRN = "900101-1234567"
SECRET_DOC = f"Hong Gildong's RRN is {RRN}; ask for project Nightjar."


class LeakyRetriever:
    async def retrieve(self, query: str) -> list[Chunk]:
        return [Chunk("c0ffee01", "hr.md", "People", SECRET_DOC)]


@contextlib.asynccontextmanager
async def guarded_client(
    tmp_path: Path, output: dict[str, Any], retriever: Any = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The agents app as deployments/agents.py wires it, with ``output`` as the output guardrail."""
    url = f"sqlite:///{tmp_path}/welip.db"
    database = Database(url)
    database.upgrade()
    trust = Trust(TrustConfig(guardrails={"output": output}), database=None, redis=None)
    async with open_checkpointer(url) as checkpointer:
        model = fake("See [c0ffee01].", "Again [c0ffee01].")
        graph = build_rag_graph(RAG, model, retriever or LeakyRetriever())
        graphs = {"docs": graph.compile(checkpointer=checkpointer)}
        config = AgentsConfig(agents=[RAG, REACT])
        runtime = AgentRuntime(graphs, {"docs": RAG}, AgentStore(database), checkpointer, config)
        app = build_agents_app(runtime, lambda r: principal_of(r).id, output_guard=CallerOutputGuard(trust))
        app.add_middleware(TrustMiddleware, trust=trust)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agents") as client:
            yield client
        await runtime.close()


BODY = {"assistant_id": "docs", "input": {"messages": [{"role": "user", "content": "Who is Hong?"}]}}


def test_retrieved_text_is_redacted_in_values_events_run_results_and_thread_state(tmp_path: Path) -> None:
    async def go() -> None:
        async with guarded_client(tmp_path, {"pii": ["kr_rrn"]}) as client:
            tid = (await client.post("/threads", json={})).json()["thread_id"]
            values = (await client.post(f"/threads/{tid}/runs/wait", json=BODY)).json()
            assert (
                values["context"][0]["text"]
                == "Hong Gildong's RRN is [REDACTED:kr_rrn]; ask for project Nightjar."
            )
            stream = await client.post(
                f"/threads/{tid}/runs/stream", json={**BODY, "stream_mode": ["values", "updates"]}
            )
            events = sse(stream.text)
            assert {e for e, _ in events} >= {"values", "updates"}
            answers = [
                (await client.get(f"/threads/{tid}")).text,
                (await client.get(f"/threads/{tid}/state")).text,
                (await client.get(f"/threads/{tid}/history")).text,
                (await client.post(f"/threads/{tid}/history", json={})).text,
                stream.text,
                json.dumps(values),
            ]
            run_id = stream.headers["x-welip-run-id"]
            answers.append((await client.get(f"/threads/{tid}/runs/{run_id}/join")).text)
            for text in answers:
                assert RRN not in text and "[REDACTED:kr_rrn]" in text

    run(go())


def test_a_blocked_pattern_in_retrieved_text_refuses_the_answer_and_ends_the_stream(tmp_path: Path) -> None:
    async def go() -> None:
        async with guarded_client(tmp_path, {"blocklist_keywords": ["nightjar"]}) as client:
            tid = (await client.post("/threads", json={})).json()["thread_id"]
            refused = await client.post(f"/threads/{tid}/runs/wait", json=BODY)
            assert refused.status_code == 400
            assert refused.json()["error"]["code"] == "content_policy_violation"
            state = await client.get(f"/threads/{tid}/state")
            assert (state.status_code, state.json()["error"]["code"]) == (400, "content_policy_violation")
            stream = await client.post(f"/threads/{tid}/runs/stream", json=BODY)
            assert "Nightjar" not in stream.text
            event, data = sse(stream.text)[-1]
            assert (event, data["error"]["code"]) == ("error", "content_policy_violation")

    run(go())


def test_token_by_token_messages_are_refused_where_output_guardrails_apply(tmp_path: Path) -> None:
    async def go() -> None:
        async with guarded_client(tmp_path, {"pii": ["kr_rrn"]}) as client:
            tid = (await client.post("/threads", json={})).json()["thread_id"]
            body = {**BODY, "stream_mode": ["values", "messages-tuple"]}
            refused = await client.post(f"/threads/{tid}/runs/stream", json=body)
            assert refused.status_code == 400
            assert refused.json()["error"] == {
                "message": refused.json()["error"]["message"],
                "type": "invalid_request_error",
                "param": "stream_mode",
                "code": "stream_mode_not_allowed",
            }

    run(go())


def test_an_output_judge_rules_on_the_values_it_sees_redacted(tmp_path: Path, judge: FakeJudge) -> None:  # noqa: F811
    async def go() -> None:
        output = {"pii": ["kr_rrn"], "judge": {"model": "judge", "base_url": judge.url}}
        async with guarded_client(tmp_path, output) as client:
            tid = (await client.post("/threads", json={})).json()["thread_id"]
            judge.verdict = "UNSAFE"
            refused = await client.post(f"/threads/{tid}/runs/wait", json=BODY)
            assert (refused.status_code, refused.json()["error"]["code"]) == (400, "content_policy_violation")
            assert judge.seen and all(RRN not in text for text in judge.seen)
            judge.verdict = "SAFE"
            assert (await client.get(f"/threads/{tid}/state")).status_code == 200
            judge.server.should_exit = True  # the judge goes down: fail closed
            judge.thread.join(5)
            down = await client.get(f"/threads/{tid}/state")
            assert (down.status_code, down.json()["error"]["code"]) == (503, "guardrail_unavailable")

    run(go())


class FailingRetriever:
    """A retriever whose failure quotes the document it choked on, as libraries' errors do."""

    async def retrieve(self, query: str) -> list[Chunk]:
        raise ValueError(f"cannot parse chunk: {SECRET_DOC}")


def test_a_failed_runs_error_text_passes_the_output_guardrail_in_events_and_run_rows(tmp_path: Path) -> None:
    async def go() -> None:
        async with guarded_client(tmp_path, {"pii": ["kr_rrn"]}, retriever=FailingRetriever()) as client:
            tid = (await client.post("/threads", json={})).json()["thread_id"]
            stream = await client.post(f"/threads/{tid}/runs/stream", json=BODY)
            event, data = sse(stream.text)[-1]
            assert event == "error" and "[REDACTED:kr_rrn]" in data["message"]
            run_id = stream.headers["x-welip-run-id"]
            waited = await client.post(f"/threads/{tid}/runs/wait", json=BODY)
            answers = [
                stream.text,
                waited.text,
                (await client.get(f"/threads/{tid}/runs/{run_id}")).text,
                (await client.get(f"/threads/{tid}/runs")).text,
                (await client.get(f"/runs/{run_id}")).text,
            ]
            for text in answers:
                assert RRN not in text and "[REDACTED:kr_rrn]" in text

    run(go())
