"""The Agent Protocol HTTP API (LangGraph Server's wire format) over an :class:`AgentRuntime`.

Threads belong to the principal that created them: every lookup is by thread id
*and* owner, so another principal gets 404, never 403 (it does not learn the id
exists). Errors use WeLIP's OpenAI error body.

What the API returns from a graph (a thread's values, state and history, a run's
result, each streamed event) passes the caller's output guardrail (:class:`OutputGuard`)
when the app is given one: retrieved documents and AI messages are redacted or refused
like a model's answer. Token-by-token ``messages`` streams are refused where it applies,
as the gateway refuses logprobs: a match split across tokens would pass it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from welip.agents._config import CallerJsonLimits
from welip.agents._graphs import AgentInput, caller_command
from welip.agents._runtime import AgentRuntime, new_id
from welip.agents._store import RunRow, ThreadBusy, ThreadRow
from welip.api import OpenAIError, load_json

OwnerOf = Callable[[Request], str]
Admit = Callable[[Request, str], Awaitable[None]]


class OutputGuard(Protocol):
    """The caller's output guardrail over what the API returns (the trust layer gives it)."""

    def active(self, request: Request) -> bool:
        """Whether an output guardrail applies to this request's caller."""
        ...

    async def apply(self, request: Request, value: Any) -> Any:
        """``value`` (JSON-ready data) with its text redacted; raises ``OpenAIError`` on a blocking match."""
        ...


STREAM_MODES = ("values", "updates", "messages", "messages-tuple")
MAX_PAGE = 1000
MAX_OFFSET = 1_000_000
# Keys of LangGraph's `configurable` that the runtime or LangGraph itself sets: never a caller.
RESERVED_CONFIGURABLE = ("thread_id", "checkpoint_ns", "checkpoint_map")


class _Body(BaseModel):
    # Clients (langgraph-sdk) send more keys than WeLIP uses: ignored, not refused.
    model_config = ConfigDict(extra="ignore")


class ThreadCreate(_Body):
    thread_id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    metadata: dict[str, Any] = Field(default_factory=dict)
    if_exists: Literal["raise", "do_nothing"] = "raise"


class ThreadPatch(_Body):
    metadata: dict[str, Any] = Field(default_factory=dict)


class ThreadSearch(_Body):
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: Literal["idle", "busy", "interrupted", "error"] | None = None
    limit: int = Field(10, gt=0, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


class ResumeCommand(_Body):
    resume: Any = None
    update: dict[str, Any] | None = None
    goto: str | list[str] | None = None


class RunConfig(_Body):
    """The parts of LangGraph's ``RunnableConfig`` a caller may set; other keys are ignored."""

    tags: list[str] = Field(default_factory=list, max_length=32)
    recursion_limit: int = Field(50, ge=1, le=200)
    configurable: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("configurable")
    @classmethod
    def _not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        # `__pregel_*` keys steer LangGraph's own loop (resuming, durability, ...).
        reserved = sorted(k for k in value if k.startswith("__") or k in RESERVED_CONFIGURABLE)
        if reserved:
            raise ValueError(f"{reserved} are set by WeLIP and LangGraph, not by callers")
        return value


class RunCreate(_Body):
    assistant_id: str = Field(min_length=1, max_length=64)
    input: dict[str, Any] | None = None
    command: ResumeCommand | None = None
    stream_mode: str | list[str] = "values"
    config: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    multitask_strategy: Literal["reject", "enqueue", "interrupt", "rollback"] = "reject"
    on_disconnect: Literal["cancel", "continue"] = "continue"
    if_not_exists: Literal["create", "reject"] = "reject"


class HistoryQuery(_Body):
    limit: int = Field(10, gt=0, le=MAX_PAGE)


_BODIES: tuple[type[_Body], ...] = (ThreadCreate, ThreadPatch, ThreadSearch, HistoryQuery, RunCreate)


def body_schemas(ref_template: str) -> dict[str, dict[str, Any]]:
    """JSON schemas of the request bodies, for the OpenAPI spec (the routes parse them themselves).

    A run's ``input`` is what every shipped graph takes (:class:`AgentInput`).
    """
    schemas: dict[str, dict[str, Any]] = {}
    models: tuple[type[BaseModel], ...] = (*_BODIES, AgentInput)
    for model in models:
        schema = model.model_json_schema(ref_template=ref_template)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    ref = {"$ref": ref_template.format(model=AgentInput.__name__)}
    schemas["RunCreate"]["properties"]["input"] = {"anyOf": [ref, {"type": "null"}], "title": "Input"}
    return schemas


def _body(model: type[_Body], *, required: bool = False) -> dict[str, Any]:
    """The route's ``openapi_extra``: its JSON body, by the model it is parsed with."""
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    return {"requestBody": {"required": required, "content": content}}


def _not_found(what: str, ident: str) -> OpenAIError:
    return OpenAIError(404, f"{what} `{ident}` not found.", code=f"{what}_not_found", param=None)


def _invalid(message: str, param: str | None, status: int = 422, code: str = "invalid_input") -> OpenAIError:
    return OpenAIError(status, message, param=param, code=code)


def _parse(model: type[_Body], raw: bytes) -> Any:
    data = load_json(raw) if raw.strip() else {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def _check_page(limit: int, offset: int = 0) -> None:
    # Checked before the database: PostgreSQL fails on a negative OFFSET, SQLite reads a
    # negative LIMIT as none, and either overflows past int64.
    if not 0 < limit <= MAX_PAGE:
        raise _invalid(f"limit must be between 1 and {MAX_PAGE}.", "limit")
    if not 0 <= offset <= MAX_OFFSET:
        raise _invalid(f"offset must be between 0 and {MAX_OFFSET}.", "offset")


def _check_json(value: Any, limits: CallerJsonLimits, param: str) -> None:
    """Refuse free-form JSON past the app's ``caller_json`` bounds (422 naming ``param``)."""
    keys, depth, stack = 0, 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            keys += len(item)
            depth = max(depth, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            depth = max(depth, level)
            stack.extend((v, level + 1) for v in item)
        if depth > limits.max_depth or keys > limits.max_keys:
            bound = (
                f"{limits.max_depth} levels deep" if depth > limits.max_depth else f"{limits.max_keys} keys"
            )
            raise _invalid(f"{param} is over the bound of {bound}.", param)
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limits.max_bytes:
        raise _invalid(f"{param} is {size} bytes as JSON, over the bound of {limits.max_bytes}.", param)


def _validation_error(exc: ValidationError, prefix: str = "") -> OpenAIError:
    first = exc.errors()[0]
    param = ".".join([p for p in (prefix,) if p] + [str(p) for p in first["loc"]]) or None
    return _invalid(f"{param}: {first['msg']}" if param else str(first["msg"]), param)


def build_agents_router(
    runtime: AgentRuntime,
    owner_of: OwnerOf,
    admit: Admit | None = None,
    output_guard: OutputGuard | None = None,
) -> APIRouter:
    """Routes for threads, runs and assistants; ``output_guard`` checks every graph value they return."""
    router = APIRouter()
    limits = runtime.config.caller_json

    async def out(request: Request, value: Any) -> Any:
        return value if output_guard is None else await output_guard.apply(request, value)

    async def run_json(request: Request, run: RunRow) -> dict[str, Any]:
        """A run row; its ``error`` (an exception's text may quote a model, a tool or a document) guarded."""
        row = run.public()
        if row["error"]:
            row["error"] = await out(request, row["error"])
        return row

    async def guarded_events(
        request: Request, events: AsyncIterator[tuple[str, Any]]
    ) -> AsyncIterator[tuple[str, Any]]:
        async for event, data in events:
            if event == "metadata":
                yield event, data
                continue
            try:
                checked = await out(request, data)
            except OpenAIError as exc:
                yield "error", exc.body()  # the stream ends here, nothing of the event sent
                return
            yield event, checked

    async def thread_or_404(request: Request, thread_id: str) -> ThreadRow:
        thread = await runtime.db(runtime.store.get_thread, thread_id, owner_of(request))
        if thread is None:
            raise _not_found("thread", thread_id)
        return thread

    def assistant_json(assistant_id: str) -> dict[str, Any]:
        agent = runtime.agents[assistant_id]
        return {
            "assistant_id": agent.assistant_id,
            "graph_id": agent.graph,
            "name": agent.name,
            "description": agent.description,
            "config": {},
            "context": {},
            "metadata": {"model": agent.llm.model, "tools": list(agent.tools)},
            "version": 1,
            "created_at": None,
            "updated_at": None,
        }

    # -- assistants -----------------------------------------------------------------

    @router.get("/assistants", summary="The assistants (graphs) this app serves")
    async def list_assistants() -> list[dict[str, Any]]:
        return [assistant_json(a) for a in runtime.agents]

    @router.post("/assistants/search", summary="Search assistants (all of them; LangGraph SDK route)")
    async def search_assistants() -> list[dict[str, Any]]:
        return [assistant_json(a) for a in runtime.agents]

    @router.get("/assistants/{assistant_id}", summary="One assistant")
    async def get_assistant(assistant_id: str) -> dict[str, Any]:
        if assistant_id not in runtime.agents:
            raise _not_found("assistant", assistant_id)
        return assistant_json(assistant_id)

    @router.get("/assistants/{assistant_id}/schemas", summary="An assistant's input and state schemas")
    async def assistant_schemas(assistant_id: str) -> dict[str, Any]:
        if assistant_id not in runtime.agents:
            raise _not_found("assistant", assistant_id)
        graph = runtime.graphs[assistant_id]
        return {
            "graph_id": runtime.agents[assistant_id].graph,
            "input_schema": AgentInput.model_json_schema(),
            "output_schema": graph.get_output_jsonschema(),
            "state_schema": graph.get_output_jsonschema(),
            "config_schema": None,
            "context_schema": None,
        }

    # -- threads --------------------------------------------------------------------

    @router.post("/threads", summary="Create a thread", openapi_extra=_body(ThreadCreate))
    async def create_thread(request: Request) -> dict[str, Any]:
        body = _parse(ThreadCreate, await request.body())
        _check_json(body.metadata, limits, "metadata")
        owner = owner_of(request)
        thread_id = body.thread_id or new_id()
        thread = await runtime.db(runtime.store.create_thread, thread_id, owner, body.metadata)
        if thread is None:
            existing = await runtime.db(runtime.store.get_thread, thread_id, owner)
            if existing is not None and body.if_exists == "do_nothing":
                return await out(request, await runtime.thread_json(existing))
            raise OpenAIError(
                409, f"Thread `{thread_id}` already exists.", param="thread_id", code="thread_exists"
            )
        return await out(request, await runtime.thread_json(thread))

    @router.post(
        "/threads/search",
        summary="Your threads, filtered by metadata and status",
        openapi_extra=_body(ThreadSearch),
    )
    async def search_threads(request: Request) -> list[dict[str, Any]]:
        body = _parse(ThreadSearch, await request.body())
        _check_json(body.metadata, limits, "metadata")
        rows = await runtime.db(
            runtime.store.search_threads,
            owner_of(request),
            metadata=body.metadata,
            status=body.status,
            limit=body.limit,
            offset=body.offset,
        )
        return [r.public() for r in rows]

    @router.get("/threads/{thread_id}", summary="A thread, its values and pending interrupts")
    async def get_thread(thread_id: str, request: Request) -> dict[str, Any]:
        return await out(request, await runtime.thread_json(await thread_or_404(request, thread_id)))

    @router.patch(
        "/threads/{thread_id}", summary="Merge metadata into a thread", openapi_extra=_body(ThreadPatch)
    )
    async def patch_thread(thread_id: str, request: Request) -> dict[str, Any]:
        body = _parse(ThreadPatch, await request.body())
        _check_json(body.metadata, limits, "metadata")
        thread = await runtime.db(
            runtime.store.update_thread,
            thread_id,
            owner_of(request),
            body.metadata,
            check=lambda merged: _check_json(merged, limits, "metadata"),
        )
        if thread is None:
            raise _not_found("thread", thread_id)
        return await out(request, await runtime.thread_json(thread))

    @router.delete(
        "/threads/{thread_id}", summary="Delete a thread, its runs and checkpoints", status_code=204
    )
    async def delete_thread(thread_id: str, request: Request) -> Response:
        thread = await thread_or_404(request, thread_id)
        if thread.active_run_id is not None:
            raise OpenAIError(409, "The thread has a run in progress; cancel it first.", code="thread_busy")
        await runtime.delete_thread(thread.thread_key)
        return Response(status_code=204)

    @router.get("/threads/{thread_id}/state", summary="The thread's current state")
    async def get_state(thread_id: str, request: Request) -> dict[str, Any]:
        return await out(request, await runtime.state(await thread_or_404(request, thread_id)))

    @router.get("/threads/{thread_id}/history", summary="The thread's past states, newest first")
    async def get_history(thread_id: str, request: Request, limit: int = 10) -> list[dict[str, Any]]:
        _check_page(limit)
        return await out(request, await runtime.history(await thread_or_404(request, thread_id), limit))

    @router.post(
        "/threads/{thread_id}/history",
        summary="The thread's past states (LangGraph SDK route)",
        openapi_extra=_body(HistoryQuery),
    )
    async def post_history(thread_id: str, request: Request) -> list[dict[str, Any]]:
        body = _parse(HistoryQuery, await request.body())
        return await out(request, await runtime.history(await thread_or_404(request, thread_id), body.limit))

    # -- runs -----------------------------------------------------------------------

    async def new_run(thread_id: str, request: Request, streams: bool = False) -> tuple[RunRow, RunCreate]:
        body = _parse(RunCreate, await request.body())
        owner = owner_of(request)
        if body.assistant_id not in runtime.agents:
            raise _not_found("assistant", body.assistant_id)
        if admit is not None:
            await admit(request, body.assistant_id)
        if body.multitask_strategy not in ("reject", "enqueue"):
            raise _invalid(
                f"multitask_strategy `{body.multitask_strategy}` is not supported; use reject or enqueue.",
                "multitask_strategy",
            )
        modes = [body.stream_mode] if isinstance(body.stream_mode, str) else list(body.stream_mode)
        unknown = [m for m in modes if m not in STREAM_MODES]
        if unknown:
            raise _invalid(f"stream_mode {unknown} not supported; use {list(STREAM_MODES)}.", "stream_mode")
        tokens = streams and any(m.startswith("messages") for m in modes)
        if tokens and output_guard is not None and output_guard.active(request):
            raise OpenAIError(
                400,
                "Output guardrails apply to your role, and token-by-token messages would bypass them "
                "(a match split across tokens). Stream `values` or `updates` instead.",
                param="stream_mode",
                code="stream_mode_not_allowed",
            )
        if (body.input is None) == (body.command is None):
            raise _invalid("Give exactly one of `input` and `command`.", "input")
        graph_input = None
        if body.input is not None:
            try:
                graph_input = AgentInput.model_validate(body.input).model_dump()
            except ValidationError as exc:
                raise _validation_error(exc, "input") from None
        _check_json(body.metadata, limits, "metadata")
        run_config = None
        if body.config is not None:
            _check_json(body.config, limits, "config")
            try:
                run_config = RunConfig.model_validate(body.config).model_dump(exclude_unset=True)
            except ValidationError as exc:
                raise _validation_error(exc, "config") from None
        command = None
        if body.command is not None:
            given = body.command.model_dump(exclude_none=True)
            for key in ("update", "resume"):
                if key in given:
                    _check_json(given[key], limits, f"command.{key}")
            try:
                command = caller_command(runtime.agents[body.assistant_id], given)
            except ValidationError as exc:
                raise _validation_error(exc, "command.update") from None
            except ValueError as exc:
                raise _invalid(f"{exc}.", "command.goto") from None
        thread = await runtime.db(runtime.store.get_thread, thread_id, owner)
        if thread is None and body.if_not_exists == "create":
            thread = await runtime.db(runtime.store.create_thread, thread_id, owner, {})
            thread = thread or await runtime.db(runtime.store.get_thread, thread_id, owner)
        if thread is None:
            raise _not_found("thread", thread_id)
        if body.command is not None and body.command.resume is not None and thread.status != "interrupted":
            raise OpenAIError(
                409,
                f"Thread `{thread_id}` is {thread.status}, not interrupted: there is nothing to resume.",
                param="command.resume",
                code="thread_not_interrupted",
            )
        kwargs = {
            "input": graph_input,
            "command": command,
            "stream_mode": modes,
            "config": run_config,
            "wants_messages": any(m.startswith("messages") for m in modes),
        }
        run = {
            "run_id": new_id(),
            "thread_id": thread_id,
            "thread_key": thread.thread_key,
            "assistant_id": body.assistant_id,
            "owner": owner,
            "multitask_strategy": body.multitask_strategy,
            "kwargs": kwargs,
            "run_metadata": body.metadata,
        }
        try:
            row = await runtime.db(
                runtime.store.create_run,
                run,
                reject_if_busy=body.multitask_strategy == "reject",
                max_pending=runtime.config.max_pending_runs_per_thread,
                replica=runtime.replica,
            )
        except ThreadBusy as exc:
            raise OpenAIError(
                409,
                f"Thread `{thread_id}` is busy: {exc}. Use multitask_strategy `enqueue` to queue this run.",
                param="multitask_strategy",
                code="thread_busy",
            ) from None
        return row, body

    def run_headers(run: RunRow) -> dict[str, str]:
        return {
            "content-location": f"/threads/{run.thread_id}/runs/{run.run_id}",
            "x-welip-run-id": run.run_id,
        }

    @router.post(
        "/threads/{thread_id}/runs",
        summary="Start a run in the background",
        openapi_extra=_body(RunCreate, required=True),
    )
    async def create_run(thread_id: str, request: Request) -> JSONResponse:
        run, _ = await new_run(thread_id, request)
        runtime.start(run)
        return JSONResponse(run.public(), headers=run_headers(run))

    @router.post(
        "/threads/{thread_id}/runs/wait",
        summary="Run and answer the thread's final values",
        openapi_extra=_body(RunCreate, required=True),
    )
    async def wait_run(thread_id: str, request: Request) -> JSONResponse:
        run, _ = await new_run(thread_id, request)
        return JSONResponse(await out(request, await runtime.wait(run)), headers=run_headers(run))

    @router.post(
        "/threads/{thread_id}/runs/stream",
        summary="Run and stream its events (SSE)",
        openapi_extra=_body(RunCreate, required=True),
    )
    async def stream_run(thread_id: str, request: Request) -> StreamingResponse:
        run, body = await new_run(thread_id, request, streams=True)
        events = runtime.stream(
            run, run.kwargs["stream_mode"], cancel_on_disconnect=body.on_disconnect == "cancel"
        )
        if output_guard is not None:
            events = guarded_events(request, events)
        return StreamingResponse(_sse(events), media_type="text/event-stream", headers=run_headers(run))

    @router.get("/threads/{thread_id}/runs", summary="The thread's runs, newest first")
    async def list_runs(
        thread_id: str,
        request: Request,
        limit: int = 10,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        _check_page(limit, offset)  # 422 naming the parameter, as on every list route
        await thread_or_404(request, thread_id)
        rows = await runtime.db(runtime.store.list_runs, thread_id, owner_of(request), limit, offset)
        return [await run_json(request, r) for r in rows]

    async def run_or_404(request: Request, run_id: str, thread_id: str | None = None) -> RunRow:
        run = await runtime.db(runtime.store.get_run, run_id, owner_of(request), thread_id)
        if run is None:
            raise _not_found("run", run_id)
        return run

    @router.get("/threads/{thread_id}/runs/{run_id}", summary="One run")
    async def get_thread_run(thread_id: str, run_id: str, request: Request) -> dict[str, Any]:
        return await run_json(request, await run_or_404(request, run_id, thread_id))

    @router.get("/threads/{thread_id}/runs/{run_id}/join", summary="Wait for a run; the thread's values")
    async def join_run(thread_id: str, run_id: str, request: Request) -> dict[str, Any]:
        return await out(request, await runtime.join(await run_or_404(request, run_id, thread_id)))

    @router.post("/threads/{thread_id}/runs/{run_id}/cancel", summary="Cancel a run")
    async def cancel_thread_run(thread_id: str, run_id: str, request: Request) -> dict[str, Any]:
        return await run_json(request, await runtime.cancel(await run_or_404(request, run_id, thread_id)))

    @router.get("/runs/{run_id}", summary="One run")
    async def get_run(run_id: str, request: Request) -> dict[str, Any]:
        return await run_json(request, await run_or_404(request, run_id))

    @router.post("/runs/{run_id}/cancel", summary="Cancel a run")
    async def cancel_run(run_id: str, request: Request) -> dict[str, Any]:
        return await run_json(request, await runtime.cancel(await run_or_404(request, run_id)))

    return router


async def _sse(events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[bytes]:
    async for event, data in events:
        yield f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
