"""Runs of compiled graphs on threads: queueing, execution, streaming, cancel, retention.

A run executes on the replica that received it, as an asyncio task that outlives the
request (a client that disconnects from a stream does not lose the run unless it
asked for ``on_disconnect: cancel``). Which replica may run a thread is decided in
the database (:class:`AgentStore`), and the graph's state is in the shared
checkpointer, so any replica answers for any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage
from langgraph.types import Command
from opentelemetry import trace
from pydantic import BaseModel

from welip.agents._caller import caller_token
from welip.agents._config import AgentConfig, AgentsConfig
from welip.agents._store import ACTIVE_RUN_STATUSES, AgentStore, RunRow, ThreadRow
from welip.agents._telemetry import agent_metrics, tracer

if TYPE_CHECKING:
    from welip.agents._kvstore import ItemStore

logger = logging.getLogger("welip.agents")

HEARTBEAT_S = 1.0
CLAIM_POLL_S = 0.05
DONE = object()


def jsonable(value: Any) -> Any:
    """Graph values (LangChain messages, interrupts, dataclasses) as JSON-ready data."""
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, BaseMessage):
        return value.model_dump()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _interrupt(item: Any) -> dict[str, Any]:
    return {"value": jsonable(getattr(item, "value", item)), "id": getattr(item, "id", None)}


def _checkpoint(config: dict[str, Any] | None, thread_id: str | None) -> dict[str, Any] | None:
    if not config:
        return None
    c = config.get("configurable", {})
    return {
        # The caller's id for the thread, not the checkpointer's (its internal thread_key).
        "thread_id": thread_id or c.get("thread_id"),
        "checkpoint_ns": c.get("checkpoint_ns", ""),
        "checkpoint_id": c.get("checkpoint_id"),
    }


def snapshot_json(snapshot: Any, thread_id: str | None = None) -> dict[str, Any]:
    """A LangGraph ``StateSnapshot`` in the Agent Protocol / LangGraph ``ThreadState`` shape.

    ``thread_id`` is the caller's id of the thread, shown in place of the checkpointer's.
    """
    tasks = [
        {
            "id": t.id,
            "name": t.name,
            "error": repr(t.error) if t.error else None,
            "interrupts": [_interrupt(i) for i in t.interrupts],
            "checkpoint": None,
            "state": None,
            "result": jsonable(t.result) if getattr(t, "result", None) is not None else None,
        }
        for t in snapshot.tasks
    ]
    return {
        "values": jsonable(snapshot.values),
        "next": list(snapshot.next),
        "checkpoint": _checkpoint(snapshot.config, thread_id),
        "metadata": jsonable(snapshot.metadata or {}),
        "created_at": snapshot.created_at,
        "parent_checkpoint": _checkpoint(snapshot.parent_config, thread_id),
        "tasks": tasks,
        "interrupts": [_interrupt(i) for i in getattr(snapshot, "interrupts", ())],
    }


def _graph_input(kwargs: dict[str, Any]) -> Any:
    command = kwargs.get("command")
    if command:
        return Command(
            resume=command.get("resume"), update=command.get("update"), goto=command.get("goto") or ()
        )
    return kwargs.get("input")


class AgentRuntime:
    """Executes runs of the app's compiled graphs against the shared store and checkpointer."""

    def __init__(
        self,
        graphs: dict[str, Any],
        agents: dict[str, AgentConfig],
        store: AgentStore,
        checkpointer: Any,
        config: AgentsConfig,
        *,
        replica: str | None = None,
        call_store: Callable[..., Any] | None = None,
        mint_caller_token: Callable[[RunRow], str | None] | None = None,
        items: ItemStore | None = None,
    ) -> None:
        """
        Args:
            mint_caller_token: Called in a run's task as the run starts: the token its LLM
                and embeddings calls send for the run's caller (``None``: they send none).
            items: The ``/store`` API's items, whose expired ones the clean-up deletes.
        """
        self.graphs = graphs
        self.agents = agents
        self.store = store
        self.checkpointer = checkpointer
        self.config = config
        self.replica = replica
        self._tasks: dict[str, asyncio.Task[str]] = {}
        # Final values and interrupts of runs this replica finished, for `wait` (popped there).
        self._outcomes: dict[str, tuple[Any, list[Any]] | None] = {}
        self._cleanup: asyncio.Task[None] | None = None
        # Store calls are blocking SQLAlchemy: off the event loop by default.
        self._call = call_store or asyncio.to_thread
        self._mint_caller_token = mint_caller_token
        self.items = items

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self._call(fn, *args, **kwargs)

    # -- state --------------------------------------------------------------------

    def _graph_for(self, thread: ThreadRow) -> Any:
        return self.graphs.get(thread.assistant_id or "") or next(iter(self.graphs.values()))

    async def state(self, thread: ThreadRow) -> dict[str, Any]:
        graph = self._graph_for(thread)
        snapshot = await graph.aget_state({"configurable": {"thread_id": thread.thread_key}})
        return snapshot_json(snapshot, thread.thread_id)

    async def history(self, thread: ThreadRow, limit: int) -> list[dict[str, Any]]:
        graph = self._graph_for(thread)
        config = {"configurable": {"thread_id": thread.thread_key}}
        return [
            snapshot_json(s, thread.thread_id) async for s in graph.aget_state_history(config, limit=limit)
        ]

    async def thread_json(self, thread: ThreadRow) -> dict[str, Any]:
        """A thread with its current values and pending interrupts (LangGraph's ``Thread``)."""
        state = await self.state(thread)
        interrupts = {t["id"]: t["interrupts"] for t in state["tasks"] if t["interrupts"]}
        return {**thread.public(), "values": state["values"], "interrupts": interrupts}

    async def update_state(self, thread: ThreadRow, values: dict[str, Any]) -> dict[str, Any]:
        """Write ``values`` (already checked against the graph's update model) as a new checkpoint.

        Raises:
            langgraph.errors.InvalidUpdateError: the thread has no state yet to update.
        """
        graph = self._graph_for(thread)
        config = await graph.aupdate_state({"configurable": {"thread_id": thread.thread_key}}, values)
        return {"checkpoint": _checkpoint(config, thread.thread_id)}

    async def copy_checkpoints(self, source_key: str, target_key: str) -> None:
        """Copy every checkpoint and pending write of a thread (by internal key) to another.

        LangGraph's savers leave ``acopy_thread`` unimplemented, so the chain is replayed
        through ``aput``/``aput_writes``: oldest first, so each parent exists before its
        child, every channel version written (PostgreSQL keeps values by version).
        """
        saver = self.checkpointer
        chain = [t async for t in saver.alist({"configurable": {"thread_id": source_key}})]
        for item in reversed(chain):
            source = item.config["configurable"]
            parent = ((item.parent_config or {}).get("configurable") or {}).get("checkpoint_id")
            target: dict[str, Any] = {
                "thread_id": target_key,
                "checkpoint_ns": source.get("checkpoint_ns", ""),
            }
            if parent:
                target["checkpoint_id"] = parent
            saved = await saver.aput(
                {"configurable": target},
                item.checkpoint,
                item.metadata,
                dict(item.checkpoint.get("channel_versions", {})),
            )
            writes: dict[str, list[tuple[str, Any]]] = {}
            for task_id, channel, value in item.pending_writes or ():
                writes.setdefault(task_id, []).append((channel, value))
            for task_id, task_writes in writes.items():
                await saver.aput_writes(saved, task_writes, task_id)

    async def delete_thread(self, thread_key: str) -> None:
        """Delete a thread (by its internal ``thread_key``), its runs and its checkpoints."""
        await self.checkpointer.adelete_thread(thread_key)
        await self.db(self.store.delete_threads, [thread_key])

    # -- runs ---------------------------------------------------------------------

    def start(self, run: RunRow, emit: Callable[[str, Any], None] | None = None) -> asyncio.Task[str]:
        """Execute ``run`` in a task of this replica; ``emit(mode, chunk)`` sees its stream."""
        task = asyncio.get_running_loop().create_task(self._execute(run, emit))
        self._tasks[run.run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run.run_id, None))
        return task

    async def stream(
        self, run: RunRow, modes: list[str], *, cancel_on_disconnect: bool
    ) -> AsyncIterator[tuple[str, Any]]:
        """The run's events as ``(event, data)`` in LangGraph's SSE vocabulary."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = self.start(run, lambda mode, chunk: queue.put_nowait((mode, chunk)))
        task.add_done_callback(lambda _: queue.put_nowait(DONE))
        yield "metadata", {"run_id": run.run_id, "thread_id": run.thread_id, "attempt": 1}
        try:
            while (item := await queue.get()) is not DONE:
                mode, chunk = item
                if mode == "error":
                    yield "error", chunk
                elif mode == "messages":
                    message, metadata = chunk
                    event = "messages" if "messages" in modes or "messages-tuple" in modes else None
                    if event:
                        meta = {**_message_metadata(metadata), "thread_id": run.thread_id}
                        yield event, [jsonable(message), jsonable(meta)]
                elif mode in modes:
                    yield mode, jsonable(chunk)
        finally:
            if not task.done() and cancel_on_disconnect:
                task.cancel()

    async def wait(self, run: RunRow) -> dict[str, Any]:
        """Execute ``run`` and answer the thread's values after it (interrupts included)."""
        self._outcomes[run.run_id] = None
        task = self.start(run)
        try:
            status = await asyncio.shield(task)  # a client that leaves does not cancel the run
        finally:
            outcome = self._outcomes.pop(run.run_id, None)
        if status == "success" and outcome is not None and outcome[0] is not None:
            values = jsonable(outcome[0])
            interrupts = _unique_interrupts(outcome[1])
            if interrupts:
                values["__interrupt__"] = interrupts
            return values
        return await self.final_values(run, with_error=status != "success")

    async def join(self, run: RunRow) -> dict[str, Any]:
        """Wait for a run started elsewhere (any replica) to end; answer the thread's values."""
        task = self._tasks.get(run.run_id)
        if task is not None:
            await asyncio.shield(task)
        else:
            while True:
                row = await self.db(self.store.get_run, run.run_id, run.owner)
                if row is None or row.status not in ACTIVE_RUN_STATUSES:
                    break
                await asyncio.sleep(0.1)
        return await self.final_values(run)

    async def final_values(self, run: RunRow, *, with_error: bool = True) -> dict[str, Any]:
        """The thread's values; ``__interrupt__`` when it waits, ``__error__`` when the run failed."""
        graph = self.graphs[run.assistant_id]
        snapshot = await graph.aget_state({"configurable": {"thread_id": run.thread_key}})
        values = jsonable(snapshot.values)
        interrupts = [_interrupt(i) for i in getattr(snapshot, "interrupts", ())]
        if interrupts:
            values["__interrupt__"] = interrupts
        if with_error:
            row = await self.db(self.store.get_run, run.run_id, run.owner)
            if row is not None and row.status not in ("success", *ACTIVE_RUN_STATUSES):
                values["__error__"] = {"status": row.status, "message": row.error}
        return values

    async def cancel(self, run: RunRow) -> RunRow:
        """Cancel a queued or running run, on whichever replica holds it."""
        task = self._tasks.get(run.run_id)
        if task is not None and not task.done():
            # Local: flag it too, in case it is still waiting for the thread.
            await self.db(self.store.request_cancel, run.run_id)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout=5)
        else:
            await self.db(self.store.request_cancel, run.run_id)
            deadline = time.monotonic() + 2 * HEARTBEAT_S + 1
            while time.monotonic() < deadline:
                row = await self.db(self.store.get_run, run.run_id, run.owner)
                if row is None or row.status not in ACTIVE_RUN_STATUSES:
                    break
                await asyncio.sleep(0.1)
        row = await self.db(self.store.get_run, run.run_id, run.owner)
        return row or run

    async def _execute(self, run: RunRow, emit: Callable[[str, Any], None] | None) -> str:
        emit = emit or (lambda mode, chunk: None)
        # A `reject` run holds its thread from creation; a queued one waits for its turn.
        while run.status == "pending" and not await self.db(
            self.store.claim, run.run_id, run.thread_key, self.replica
        ):
            row = await self.db(self.store.get_run, run.run_id, run.owner)
            if row is None or row.status != "pending":
                return row.status if row else "interrupted"
            await asyncio.sleep(CLAIM_POLL_S)
        current = asyncio.current_task()
        if current is None:  # a coroutine always runs in a task; narrows the type
            raise RuntimeError("an agent run executes inside an asyncio task")
        if self._mint_caller_token is not None:
            # This task's own context: the graph's node tasks copy it, no other run sees it.
            caller_token.set(self._mint_caller_token(run))
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(run, current))
        status, thread_status, error = "error", "error", None
        started = time.perf_counter()
        metrics = agent_metrics()
        attributes = {
            "openinference.span.kind": "AGENT",
            "session.id": run.thread_id,
            "user.id": run.owner,
            "welip.run_id": run.run_id,
            "welip.assistant_id": run.assistant_id,
        }
        with tracer.start_as_current_span(f"agent.run {run.assistant_id}", attributes=attributes) as span:
            try:
                status, thread_status = await asyncio.wait_for(
                    self._run_graph(run, emit), timeout=self.config.run_timeout_s
                )
                if thread_status == "interrupted":
                    metrics.interrupts.inc(1, tags={"assistant": run.assistant_id})
            except TimeoutError:
                status, thread_status, error = (
                    "timeout",
                    "idle",
                    f"run exceeded {self.config.run_timeout_s} s",
                )
                emit("error", {"error": "TimeoutError", "message": error})
            except asyncio.CancelledError:
                status, thread_status, error = "interrupted", "idle", "cancelled"
            except Exception as exc:
                logger.exception("run %s of %s failed", run.run_id, run.assistant_id)
                status, thread_status, error = "error", "error", f"{type(exc).__name__}: {exc}"[:2000]
                emit("error", {"error": type(exc).__name__, "message": str(exc)[:2000]})
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            finally:
                heartbeat.cancel()
                span.set_attribute("welip.run.status", status)
                # Shielded: the run's end is recorded even when its task was cancelled.
                await asyncio.shield(
                    self.db(self.store.finish_run, run.run_id, run.thread_key, status, thread_status, error)
                )
                metrics.runs.inc(1, tags={"assistant": run.assistant_id, "status": status})
                metrics.run_latency.observe(
                    time.perf_counter() - started, tags={"assistant": run.assistant_id}
                )
        return status

    async def _run_graph(self, run: RunRow, emit: Callable[[str, Any], None]) -> tuple[str, str]:
        graph = self.graphs[run.assistant_id]
        user_config = run.kwargs.get("config") or {}
        config = {
            **user_config,
            "configurable": {**(user_config.get("configurable") or {}), "thread_id": run.thread_key},
            "metadata": {**(user_config.get("metadata") or {}), "run_id": run.run_id, "user_id": run.owner},
            "recursion_limit": min(int(user_config.get("recursion_limit", 50)), 200),
        }
        modes = ["values", "updates"]
        if run.kwargs.get("wants_messages"):
            modes.append("messages")
        values: Any = None
        interrupts: list[Any] = []
        async for mode, chunk in graph.astream(_graph_input(run.kwargs), config, stream_mode=modes):
            emit(mode, chunk)
            # The stream itself tells the end state: no checkpoint read after the run.
            if isinstance(chunk, dict) and "__interrupt__" in chunk:
                interrupts.extend(chunk["__interrupt__"])
            elif mode == "values":
                values = chunk
        if run.run_id in self._outcomes:  # somebody waits for them (`wait`)
            self._outcomes[run.run_id] = (values, interrupts)
        return "success", "interrupted" if interrupts else "idle"

    async def _heartbeat(self, run: RunRow, task: asyncio.Task[Any]) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                if await self.db(self.store.heartbeat, run.run_id):
                    task.cancel()
                    return
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried
                logger.warning("heartbeat of run %s failed: %s", run.run_id, exc)

    # -- retention ----------------------------------------------------------------

    def start_cleanup(self) -> None:
        """Delete threads idle past ``thread_ttl_s`` and expired store items, every ``cleanup_interval_s``."""
        self._cleanup = asyncio.get_running_loop().create_task(self._cleanup_loop())

    async def cleanup_once(self) -> int:
        keys = await self.db(self.store.expired_threads, self.config.thread_ttl_s)
        for key in keys:
            await self.delete_thread(key)
        if keys:
            logger.info("deleted %d threads idle for more than %s s", len(keys), self.config.thread_ttl_s)
        if self.items is not None:
            swept = await self.db(self.items.sweep)
            if swept:
                logger.info("deleted %d expired store items", swept)
        return len(keys)

    async def _cleanup_loop(self) -> None:
        while True:
            try:
                await self.cleanup_once()
            except Exception as exc:  # noqa: BLE001 - retried next interval
                logger.warning("thread clean-up failed: %s", exc)
            await asyncio.sleep(self.config.cleanup_interval_s)

    async def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup.cancel()
        for task in list(self._tasks.values()):
            task.cancel()


def _unique_interrupts(items: list[Any]) -> list[dict[str, Any]]:
    seen: dict[Any, dict[str, Any]] = {}
    for item in items:
        entry = _interrupt(item)
        seen.setdefault(entry["id"] or len(seen), entry)
    return list(seen.values())


def _message_metadata(metadata: Any) -> dict[str, Any]:
    keep = ("langgraph_node", "langgraph_step", "run_id", "thread_id", "ls_model_name")
    return {k: metadata[k] for k in keep if isinstance(metadata, dict) and k in metadata}


def new_id() -> str:
    return str(uuid.uuid4())
