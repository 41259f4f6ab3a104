"""Conversations at rest: agent runs' input and LangGraph checkpoints encrypted, keys rotated."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import START, MessagesState, StateGraph

from welip.agents._store import AgentStore, checkpoint_serde
from welip.store import Database, DecryptionError, Keyring

SECRET = "my RRN is 900101-1234567"


def _run(run_id: str, key: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "thread_id": "t1",
        "thread_key": key,
        "assistant_id": "docs",
        "owner": "alice",
        "multitask_strategy": "enqueue",
        "kwargs": {"input": {"messages": [{"role": "user", "content": SECRET}]}, "stream_mode": ["values"]},
        "run_metadata": {},
    }


def test_run_input_is_sealed_and_reads_back_after_rotation(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/w.db")
    db.upgrade()
    k1, k1_entry = Keyring.generate("k1")
    store = AgentStore(db, keyring=k1)
    thread = store.create_thread("t1", "alice", {})
    assert thread is not None
    created = store.create_run(_run("r1", thread.thread_key), reject_if_busy=False, max_pending=10)
    assert created.kwargs["input"]["messages"][0]["content"] == SECRET
    with sqlite3.connect(tmp_path / "w.db") as conn:
        (raw,) = conn.execute("SELECT kwargs FROM agent_runs").fetchone()
    assert "wlpenc:v1:k1:" in raw and "900101" not in raw
    _, k2_entry = Keyring.generate("k2")
    rotated = AgentStore(db, keyring=Keyring.parse(f"{k2_entry},{k1_entry}"))
    run = rotated.get_run("r1", "alice")
    assert run is not None and run.kwargs == created.kwargs
    with pytest.raises(DecryptionError, match="key id 'k1'"):
        AgentStore(db, keyring=Keyring.parse(k2_entry)).get_run("r1", "alice")


def _graph(checkpointer: Any) -> Any:
    def reply(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(f"you said: {state['messages'][-1].content}")]}

    return (
        StateGraph(MessagesState)
        .add_node("reply", reply)
        .add_edge(START, "reply")
        .compile(checkpointer=checkpointer)
    )


def test_checkpoints_are_sealed_and_continue_after_rotation(tmp_path: Path) -> None:
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = tmp_path / "checkpoints.db"
    k1, k1_entry = Keyring.generate("k1")
    _, k2_entry = Keyring.generate("k2")
    config = {"configurable": {"thread_id": "t1"}}

    async def turn(keyring: Keyring, text: str | None) -> list[Any]:
        """One more turn of the conversation (None: read its history), under ``keyring``."""
        async with aiosqlite.connect(path) as conn:
            saver = AsyncSqliteSaver(conn, serde=checkpoint_serde(keyring))
            await saver.setup()
            graph = _graph(saver)
            if text is None:
                return [len(s.values.get("messages", [])) async for s in graph.aget_state_history(config)]
            out = await graph.ainvoke({"messages": [HumanMessage(text)]}, config)
        return [m.content for m in out["messages"]]

    assert asyncio.run(turn(k1, SECRET)) == [SECRET, f"you said: {SECRET}"]
    raw = path.read_bytes()
    assert b"900101" not in raw and b"wlpenc:v1:k1" in raw
    with pytest.raises(DecryptionError, match="key id 'k1'"):
        asyncio.run(turn(Keyring.parse(k2_entry), "without k1"))
    # k2 current, k1 kept: the conversation written under k1 continues, its history reads back.
    rotated = Keyring.parse(f"{k2_entry},{k1_entry}")
    assert asyncio.run(turn(rotated, "again")) == [SECRET, f"you said: {SECRET}", "again", "you said: again"]
    assert b"wlpenc:v1:k2" in path.read_bytes()
    counts = asyncio.run(turn(rotated, None))  # messages per checkpoint, newest first
    assert counts[0] == 4 and {1, 2} <= set(counts)  # those with 1 and 2 were sealed under k1


def test_no_keys_leave_langgraphs_serializer() -> None:
    assert checkpoint_serde(Keyring()) is None
