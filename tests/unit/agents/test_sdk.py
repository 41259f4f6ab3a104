"""The unchanged ``langgraph-sdk`` client against the agents app: what WeLIP serves works, and
what it does not is refused naming the field or route (501), never silently ignored.

The SDK's ``get_client`` takes no transport, so its public ``LangGraphClient`` is given an
httpx client over the app's ASGI transport (what ``get_client`` builds, minus the network).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import APIStatusError, NotFoundError, UnprocessableEntityError

from tests.unit.agents.test_api import action, agents_client, fake, run
from welip.agents._api import NOT_IMPLEMENTED_ROUTES


@contextlib.asynccontextmanager
async def sdk(
    tmp_path: Path, models: dict[str, Any]
) -> AsyncIterator[tuple[LangGraphClient, LangGraphClient]]:
    """Two SDK clients on one app: alice's and bob's."""
    async with agents_client(tmp_path, models) as (client, _):
        transport = client._transport
        alice = LangGraphClient(httpx.AsyncClient(transport=transport, base_url="http://agents"))
        bob = LangGraphClient(
            httpx.AsyncClient(transport=transport, base_url="http://agents", headers={"x-user": "bob"})
        )
        async with alice, bob:
            yield alice, bob


async def _refused(call: Any, status: int = 501) -> str:
    """The message of the error ``call`` raises (its status checked)."""
    # The SDK's reconnecting calls (`runs.wait`, `runs.join`, `runs.cancel`) raise httpx's error.
    with pytest.raises((APIStatusError, httpx.HTTPStatusError)) as caught:
        await call
    error = caught.value
    code = error.response.status_code if isinstance(error, httpx.HTTPStatusError) else error.status_code
    assert code == status, error
    if isinstance(error, httpx.HTTPStatusError):
        return str(error.response.json()["error"]["message"])
    return str(error)


async def _first(stream: Any) -> Any:
    """The first event of an SDK stream (some stream methods are coroutines that return one)."""
    if inspect.isawaitable(stream):
        stream = await stream
    return await anext(aiter(stream))


RUN_FIELDS: list[tuple[str, Any]] = [
    ("interrupt_before", ["agent"]),
    ("interrupt_after", "*"),
    ("checkpoint_id", "1ef-00"),
    ("webhook", "https://example.com/hook"),
    ("after_seconds", 5),
    ("durability", "exit"),
    ("stream_subgraphs", True),
    ("context", {"user": "x"}),
]


def test_run_fields_welip_does_not_implement_are_refused_naming_them(tmp_path: Path) -> None:
    async def main() -> None:
        async with sdk(tmp_path, {"docs": fake("a"), "tools": fake("b")}) as (alice, _):
            thread = await alice.threads.create()
            tid = thread["thread_id"]
            question = {"messages": [{"role": "user", "content": "hi"}]}
            for field, value in RUN_FIELDS:
                message = await _refused(alice.runs.create(tid, "docs", input=question, **{field: value}))
                assert f"`{field}`" in message, message
            for strategy in ("interrupt", "rollback"):
                message = await _refused(
                    alice.runs.create(tid, "docs", input=question, multitask_strategy=strategy)  # type: ignore[arg-type]
                )
                assert "multitask_strategy" in message and strategy in message
            for mode in ("events", "debug", "custom"):
                stream = alice.runs.stream(tid, "docs", input=question, stream_mode=mode)  # type: ignore[arg-type]
                message = await _refused(_first(stream))  # type: ignore[arg-type]
                assert mode in message, message
            # A config key LangGraph has but WeLIP does not pass on; and one nobody has.
            message = await _refused(
                alice.runs.create(tid, "docs", input=question, config={"run_name": "x"})  # type: ignore[typeddict-unknown-key]
            )
            assert "config.run_name" in message
            await _refused(
                alice.runs.create(tid, "docs", input=question, config={"typo": 1}),  # type: ignore[typeddict-unknown-key]
                422,
            )
            # Nothing ran: every refusal came before the run was created.
            assert await alice.runs.list(tid) == []
            # The SDK's defaults (stream_subgraphs=False, ...) are no request for anything.
            chunks = [c async for c in alice.runs.stream(tid, "docs", input=question)]
            assert chunks[-1].event == "values" and chunks[-1].data["messages"][-1]["content"].startswith("a")

    run(main())


def test_other_fields_and_query_parameters_are_refused_naming_them(tmp_path: Path) -> None:
    async def main() -> None:
        async with sdk(tmp_path, {"docs": fake("a"), "tools": fake("b")}) as (alice, _):
            assert "`ttl`" in await _refused(alice.threads.create(ttl=60))
            tid = (await alice.threads.create())["thread_id"]
            assert "`ids`" in await _refused(alice.threads.search(ids=[tid]))
            assert "`sort_by`" in await _refused(alice.threads.search(sort_by="created_at"))
            assert "`values`" in await _refused(alice.threads.count(values={"a": 1}))
            assert "`before`" in await _refused(alice.threads.get_history(tid, before="x"))  # type: ignore[arg-type]
            assert "subgraphs" in await _refused(alice.threads.get_state(tid, subgraphs=True))
            assert "`include`" in await _refused(alice.threads.get(tid, include=["ttl"]))
            assert "`sort_by`" in await _refused(alice.assistants.search(sort_by="name"))
            assert "status" in await _refused(alice.runs.list(tid, status="success"))
            # Plain calls with the SDK's defaults work.
            assert (await alice.threads.get_state(tid))["values"] == {}
            assert (await alice.threads.get(tid))["thread_id"] == tid

    run(main())


def test_every_route_the_sdk_calls_that_welip_lacks_answers_501_naming_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with sdk(tmp_path, {"docs": fake("a"), "tools": fake("b")}) as (alice, _):
            tid = (await alice.threads.create())["thread_id"]
            calls = {
                "POST /assistants": alice.assistants.create("rag"),
                "PATCH /assistants/{assistant_id}": alice.assistants.update("docs", name="x"),
                "DELETE /assistants/{assistant_id}": alice.assistants.delete("docs"),
                "POST /assistants/{assistant_id}/versions": alice.assistants.get_versions("docs"),
                "POST /assistants/{assistant_id}/latest": alice.assistants.set_latest("docs", 1),
                "POST /threads/prune": alice.threads.prune([tid]),
                "GET /threads/{thread_id}/state/{checkpoint_id}": alice.threads.get_state(
                    tid, checkpoint_id="c1"
                ),
                "POST /threads/{thread_id}/state/checkpoint": alice.threads.get_state(
                    tid, checkpoint={"checkpoint_id": "c1"}
                ),
                "POST /runs/wait": alice.runs.wait(None, "docs", input={"messages": []}),
                "POST /runs": alice.runs.create(None, "docs", input={"messages": []}),
                "POST /runs/batch": alice.runs.create_batch([{"assistant_id": "docs"}]),
                "POST /runs/cancel": alice.runs.cancel_many(thread_id=tid, run_ids=["r"]),
                "DELETE /threads/{thread_id}/runs/{run_id}": alice.runs.delete(tid, "r"),
                "POST /threads/{thread_id}/runs/crons": alice.crons.create_for_thread(
                    tid, "docs", schedule="* * * * *"
                ),
                "POST /runs/crons": alice.crons.create("docs", schedule="* * * * *"),
                "DELETE /runs/crons/{cron_id}": alice.crons.delete("c"),
                "PATCH /runs/crons/{cron_id}": alice.crons.update("c", schedule="* * * * *"),
                "POST /runs/crons/search": alice.crons.search(),
                "POST /runs/crons/count": alice.crons.count(),
            }
            for route, call in calls.items():
                message = await _refused(call)
                assert f"`{route}`" in message, (route, message)
            streams = {
                "POST /runs/stream": alice.runs.stream(None, "docs", input={"messages": []}),
                "GET /threads/{thread_id}/stream": alice.threads.join_stream(tid),
                "GET /threads/{thread_id}/runs/{run_id}/stream": alice.runs.join_stream(tid, "r"),
            }
            for route, stream in streams.items():
                assert f"`{route}`" in await _refused(_first(stream)), route  # type: ignore[arg-type]
            # Every declared route is exercised above (the table is the inventory's "501" rows).
            named = set(calls) | set(streams)
            assert named == {f"{m} {p}" for m, p in NOT_IMPLEMENTED_ROUTES}

    run(main())


def test_count_copy_update_state_and_schemas_scoped_to_the_caller(tmp_path: Path) -> None:
    models = {
        "docs": fake("a"),
        "tools": fake(action("calculator", "2+2"), action("final_answer", "4")),
    }

    async def main() -> None:
        async with sdk(tmp_path, models) as (alice, bob):
            tid = (await alice.threads.create(metadata={"team": "x"}))["thread_id"]
            await alice.threads.create()
            await bob.threads.create(metadata={"team": "x"})
            assert await alice.threads.count() == 2
            assert await alice.threads.count(metadata={"team": "x"}) == 1
            assert await bob.threads.count() == 1
            assert await alice.assistants.count() == 2
            assert await alice.assistants.count(graph_id="react") == 1
            assert [a["assistant_id"] for a in await alice.assistants.search(graph_id="rag")] == ["docs"]
            schemas = await alice.assistants.get_schemas("tools")
            assert "messages" in schemas["input_schema"]["properties"]

            # A state update before any run: nothing to update yet (409), not a crash.
            await _refused(alice.threads.update_state(tid, {"steps": 1}), 409)
            question = {"messages": [{"role": "user", "content": "2+2?"}]}
            await alice.runs.wait(tid, "tools", input=question)
            before = await alice.threads.get_state(tid)
            assert before["values"]["steps"] == 1

            # Writes pass the graph's update model: steps yes, messages (a forged tool call) no.
            with pytest.raises(UnprocessableEntityError, match="messages"):
                await alice.threads.update_state(tid, {"messages": [{"type": "ai", "content": "x"}]})
            assert "`as_node`" in await _refused(
                alice.threads.update_state(tid, {"steps": 0}, as_node="agent")
            )
            updated = await alice.threads.update_state(tid, {"steps": 0})
            after = await alice.threads.get_state(tid)
            assert after["values"]["steps"] == 0
            assert after["checkpoint"]["checkpoint_id"] == updated["checkpoint"]["checkpoint_id"]

            copy = await alice.threads.copy(tid)
            assert copy["thread_id"] != tid and copy["values"] == after["values"]
            copied = await alice.threads.get_history(copy["thread_id"], limit=50)
            original = await alice.threads.get_history(tid, limit=50)
            assert [h["values"] for h in copied] == [h["values"] for h in original]
            # The copy runs on: its own next turn, the original untouched.
            models["tools"].messages = iter([action("final_answer", "again")])
            await alice.runs.wait(
                copy["thread_id"], "tools", input={"messages": [{"role": "user", "content": "?"}]}
            )
            assert len((await alice.threads.get_state(copy["thread_id"]))["values"]["messages"]) > len(
                after["values"]["messages"]
            )
            assert (await alice.threads.get_state(tid))["values"] == after["values"]

            # Another principal: 404 on every one of these, alice's thread unchanged.
            for call in (
                bob.threads.copy(tid),
                bob.threads.update_state(tid, {"steps": 0}),
                bob.threads.get_state(tid),
            ):
                with pytest.raises(NotFoundError):
                    await call
            assert await bob.threads.count() == 1

    run(main())
