"""The Agent Protocol HTTP API (LangGraph Server's wire format) over an :class:`AgentRuntime`.

Threads belong to the principal that created them: every lookup is by thread id
*and* owner, so another principal gets 404, never 403 (it does not learn the id
exists). Errors use WeLIP's OpenAI error body (``langgraph-sdk`` reads its
``error.message`` as it reads LangGraph's ``detail``).

Nothing a client sends is silently ignored: a field or query parameter of LangGraph's API
that WeLIP does not implement is refused with 501 naming it (unless it carries its neutral
value, such as ``stream_subgraphs: false``), an unknown one with 422, and every route
``langgraph-sdk`` calls that WeLIP does not serve answers 501 naming the route.

What the API returns from a graph (a thread's values, state and history, a run's
result, each streamed event) passes the caller's output guardrail (:class:`OutputGuard`)
when the app is given one: retrieved documents and AI messages are redacted or refused
like a model's answer. Token-by-token ``messages`` streams are refused where it applies,
as the gateway refuses logprobs: a match split across tokens would pass it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, Literal, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langgraph.errors import InvalidUpdateError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from welip.agents._config import CallerJsonLimits
from welip.agents._custom import check_values, graph_schemas
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
# LangGraph's stream modes WeLIP does not stream (yet): 501, where an unknown mode is 422.
UNSUPPORTED_STREAM_MODES = ("events", "debug", "custom", "tasks", "checkpoints")
MAX_PAGE = 1000
MAX_OFFSET = 1_000_000
# Keys of LangGraph's `configurable` that the runtime or LangGraph itself sets: never a caller.
RESERVED_CONFIGURABLE = ("thread_id", "checkpoint_ns", "checkpoint_map")


class _Body(BaseModel):
    """A request body: unknown keys are refused (422), never ignored.

    ``UNSUPPORTED`` names the fields of LangGraph's API that WeLIP does not implement, each
    with the values that ask for nothing (what ``langgraph-sdk`` sends by default); any
    other value is refused with 501 naming the field (:func:`_parse`).
    """

    model_config = ConfigDict(extra="forbid")
    UNSUPPORTED: ClassVar[dict[str, tuple[Any, ...]]] = {}


class ThreadCreate(_Body):
    UNSUPPORTED = {"supersteps": (None, []), "ttl": (None,)}
    thread_id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    metadata: dict[str, Any] = Field(default_factory=dict)
    if_exists: Literal["raise", "do_nothing"] = "raise"


class ThreadPatch(_Body):
    UNSUPPORTED = {"ttl": (None,)}
    metadata: dict[str, Any] = Field(default_factory=dict)


class ThreadCount(_Body):
    UNSUPPORTED = {"values": (None, {})}
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: Literal["idle", "busy", "interrupted", "error"] | None = None


class ThreadSearch(ThreadCount):
    UNSUPPORTED = {
        **ThreadCount.UNSUPPORTED,
        "ids": (None, []),
        "sort_by": (None,),
        "sort_order": (None,),
        "select": (None, []),
        "extract": (None, {}),
    }
    limit: int = Field(10, gt=0, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


class StateUpdate(_Body):
    UNSUPPORTED = {"checkpoint": (None,), "checkpoint_id": (None,), "as_node": (None,)}
    values: dict[str, Any] | None = None


class AssistantCount(_Body):
    metadata: dict[str, Any] = Field(default_factory=dict)
    graph_id: str | None = Field(None, max_length=64)
    name: str | None = Field(None, max_length=256)


class AssistantSearch(AssistantCount):
    UNSUPPORTED = {"sort_by": (None,), "sort_order": (None,), "select": (None, [])}
    limit: int = Field(10, gt=0, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


class ResumeCommand(_Body):
    resume: Any = None
    update: dict[str, Any] | None = None
    goto: str | list[str] | None = None


class RunConfig(_Body):
    """The parts of LangGraph's ``RunnableConfig`` a caller may set; other keys are refused."""

    UNSUPPORTED = {
        "run_name": (None,),
        "max_concurrency": (None,),
        "callbacks": (None, []),
        "run_id": (None,),
    }

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
    UNSUPPORTED = {
        "interrupt_before": (None, []),
        "interrupt_after": (None, []),
        "checkpoint": (None,),
        "checkpoint_id": (None,),
        "checkpoint_during": (None,),
        "durability": (None,),
        "webhook": (None,),
        "on_completion": (None,),
        "after_seconds": (None, 0),
        "feedback_keys": (None, []),
        "stream_subgraphs": (None, False),
        "stream_resumable": (None, False),
        "context": (None, {}),
        "langsmith_tracer": (None,),
        # WeLIP always refuses a resume of a thread that waits for nothing (409).
        "strict_resume": (None, True),
    }
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
    UNSUPPORTED = {"before": (None,), "metadata": (None, {}), "checkpoint": (None,), "select": (None, [])}
    limit: int = Field(10, gt=0, le=MAX_PAGE)


_BODIES: tuple[type[_Body], ...] = (
    ThreadCreate,
    ThreadPatch,
    ThreadCount,
    ThreadSearch,
    StateUpdate,
    AssistantCount,
    AssistantSearch,
    HistoryQuery,
    RunCreate,
)

# Routes `langgraph-sdk` calls that WeLIP does not serve: 501 naming the route, not 404/405.
# Each is more specific than (or of another method than) the served routes, so none shadows one.
NOT_IMPLEMENTED_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", "/assistants"),
    ("PATCH", "/assistants/{assistant_id}"),
    ("DELETE", "/assistants/{assistant_id}"),
    ("POST", "/assistants/{assistant_id}/versions"),
    ("POST", "/assistants/{assistant_id}/latest"),
    ("POST", "/threads/prune"),
    ("POST", "/threads/{thread_id}/state/checkpoint"),
    ("GET", "/threads/{thread_id}/state/{checkpoint_id}"),
    ("GET", "/threads/{thread_id}/stream"),
    ("GET", "/threads/{thread_id}/runs/{run_id}/stream"),
    ("DELETE", "/threads/{thread_id}/runs/{run_id}"),
    ("POST", "/runs"),
    ("POST", "/runs/stream"),
    ("POST", "/runs/wait"),
    ("POST", "/runs/batch"),
    ("POST", "/runs/cancel"),
    ("POST", "/threads/{thread_id}/runs/crons"),
    ("POST", "/runs/crons"),
    ("PATCH", "/runs/crons/{cron_id}"),
    ("DELETE", "/runs/crons/{cron_id}"),
    ("POST", "/runs/crons/search"),
    ("POST", "/runs/crons/count"),
)


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


def _not_implemented(what: str, param: str | None) -> OpenAIError:
    return OpenAIError(
        501, f"{what} is not implemented by WeLIP's agents API.", param=param, code="not_implemented"
    )


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    # By type too: 0 == False, and `after_seconds: false` is not `0`.
    return any(type(value) is type(n) and value == n for n in neutral)


def _refuse_unsupported(model: type[_Body], data: Any, prefix: str = "") -> Any:
    """``data`` without the unsupported fields that ask for nothing; 501 naming one that asks."""
    if not isinstance(data, dict) or not model.UNSUPPORTED:
        return data
    for key, neutral in model.UNSUPPORTED.items():
        if key in data and not _is_neutral(data[key], neutral):
            raise _not_implemented(f"`{prefix}{key}`", f"{prefix}{key}")
    return {k: v for k, v in data.items() if k not in model.UNSUPPORTED}


def _parse(model: type[_Body], raw: bytes) -> Any:
    data = _refuse_unsupported(model, load_json(raw) if raw.strip() else {})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def _query(request: Request, served: tuple[str, ...], unsupported: dict[str, tuple[str, ...]]) -> None:
    """Refuse query parameters: 501 for LangGraph's that WeLIP does not implement (unless given
    a neutral value, as ``langgraph-sdk`` sends ``subgraphs=false``), 422 for unknown ones."""
    for key, value in request.query_params.multi_items():
        if key in served:
            continue
        if key in unsupported:
            if value.lower() not in unsupported[key]:
                raise _not_implemented(f"Query parameter `{key}` (given `{value}`)", key)
            continue
        raise _invalid(f"Unknown query parameter `{key}`.", key)


MAX_XRAY = 16


def _xray(value: str) -> bool | int:
    """``xray`` as LangGraph takes it: true/false, or the depth of subgraphs to draw (0..16)."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value.isdigit() and int(value) <= MAX_XRAY:
        return int(value)
    raise _invalid(f"xray must be true, false or a depth from 0 to {MAX_XRAY}.", "xray")


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

    schemas: dict[str, dict[str, Any]] = {}

    def schemas_of(assistant_id: str) -> dict[str, Any]:
        """The graph's JSON schemas (a shipped graph's input is :class:`AgentInput`), computed once."""
        if assistant_id not in schemas:
            found = graph_schemas(runtime.graphs[assistant_id])
            if runtime.agents[assistant_id].builtin:
                found["input_schema"] = AgentInput.model_json_schema()
            schemas[assistant_id] = found
        return schemas[assistant_id]

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

    def matching_assistants(body: AssistantCount) -> list[dict[str, Any]]:
        # Equality on top-level metadata keys, as thread search filters.
        return [
            a
            for a in (assistant_json(i) for i in runtime.agents)
            if (body.graph_id is None or a["graph_id"] == body.graph_id)
            and (body.name is None or a["name"] == body.name)
            and all(a["metadata"].get(k) == v for k, v in body.metadata.items())
        ]

    @router.get("/assistants", summary="The assistants (graphs) this app serves")
    async def list_assistants() -> list[dict[str, Any]]:
        return [assistant_json(a) for a in runtime.agents]

    @router.post(
        "/assistants/search",
        summary="Assistants by metadata, graph and name (LangGraph SDK route)",
        openapi_extra=_body(AssistantSearch),
    )
    async def search_assistants(request: Request) -> list[dict[str, Any]]:
        body = _parse(AssistantSearch, await request.body())
        _check_json(body.metadata, limits, "metadata")
        return matching_assistants(body)[body.offset : body.offset + body.limit]

    @router.post(
        "/assistants/count",
        summary="How many assistants match (LangGraph SDK route)",
        openapi_extra=_body(AssistantCount),
    )
    async def count_assistants(request: Request) -> int:
        body = _parse(AssistantCount, await request.body())
        _check_json(body.metadata, limits, "metadata")
        return len(matching_assistants(body))

    @router.get("/assistants/{assistant_id}", summary="One assistant")
    async def get_assistant(assistant_id: str) -> dict[str, Any]:
        if assistant_id not in runtime.agents:
            raise _not_found("assistant", assistant_id)
        return assistant_json(assistant_id)

    @router.get(
        "/assistants/{assistant_id}/schemas", summary="An assistant's input, output and state schemas"
    )
    async def assistant_schemas(assistant_id: str) -> dict[str, Any]:
        if assistant_id not in runtime.agents:
            raise _not_found("assistant", assistant_id)
        return {"graph_id": runtime.agents[assistant_id].graph, **schemas_of(assistant_id)}

    @router.get("/assistants/{assistant_id}/graph", summary="An assistant's graph: its nodes and edges")
    async def assistant_graph(assistant_id: str, request: Request) -> dict[str, Any]:
        _query(request, ("xray",), {})
        xray = _xray(request.query_params.get("xray", "false"))
        if assistant_id not in runtime.agents:
            raise _not_found("assistant", assistant_id)
        graph = runtime.graphs[assistant_id]
        drawn = await asyncio.to_thread(getattr(graph, "base", graph).get_graph, xray=xray)
        return dict(drawn.to_json())

    @router.get("/assistants/{assistant_id}/subgraphs", summary="An assistant's subgraphs and their schemas")
    async def assistant_subgraphs(assistant_id: str, request: Request) -> dict[str, Any]:
        return await subgraphs_of(assistant_id, None, request)

    @router.get(
        "/assistants/{assistant_id}/subgraphs/{namespace}",
        summary="The schemas of an assistant's subgraph at one namespace (and below, with recurse)",
    )
    async def assistant_subgraph(assistant_id: str, namespace: str, request: Request) -> dict[str, Any]:
        return await subgraphs_of(assistant_id, namespace, request)

    async def subgraphs_of(assistant_id: str, namespace: str | None, request: Request) -> dict[str, Any]:
        _query(request, ("recurse",), {})
        recurse = request.query_params.get("recurse", "false").lower()
        if recurse not in ("true", "false"):
            raise _invalid("recurse must be true or false.", "recurse")
        if assistant_id not in runtime.agents:
            raise _not_found("assistant", assistant_id)
        graph = runtime.graphs[assistant_id]
        graph = getattr(graph, "base", graph)

        def found() -> dict[str, Any]:
            pairs = graph.get_subgraphs(namespace=namespace, recurse=recurse == "true")
            return {ns: graph_schemas(subgraph) for ns, subgraph in pairs}

        return await asyncio.to_thread(found)

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

    @router.post("/threads/count", summary="How many of your threads match", openapi_extra=_body(ThreadCount))
    async def count_threads(request: Request) -> int:
        body = _parse(ThreadCount, await request.body())
        _check_json(body.metadata, limits, "metadata")
        rows = await runtime.db(
            runtime.store.search_threads,
            owner_of(request),
            metadata=body.metadata,
            status=body.status,
            limit=MAX_OFFSET + MAX_PAGE,
            offset=0,
        )
        return len(rows)

    @router.get("/threads/{thread_id}", summary="A thread, its values and pending interrupts")
    async def get_thread(thread_id: str, request: Request) -> dict[str, Any]:
        _query(request, (), {"include": ("",)})
        return await out(request, await runtime.thread_json(await thread_or_404(request, thread_id)))

    @router.post("/threads/{thread_id}/copy", summary="Copy a thread, its state and history, to a new id")
    async def copy_thread(thread_id: str, request: Request) -> dict[str, Any]:
        source = await thread_or_404(request, thread_id)
        if source.active_run_id is not None:
            raise OpenAIError(
                409, "The thread has a run in progress; copy it when it ends.", code="thread_busy"
            )
        owner = owner_of(request)
        status = "idle" if source.status == "busy" else source.status
        copy = await runtime.db(
            runtime.store.create_thread,
            new_id(),
            owner,
            source.metadata,
            assistant_id=source.assistant_id,
            status=status,
        )
        try:
            await runtime.copy_checkpoints(source.thread_key, copy.thread_key)
        except BaseException:
            await runtime.delete_thread(copy.thread_key)  # no half copy left behind
            raise
        return await out(request, await runtime.thread_json(copy))

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
        _query(request, (), {"subgraphs": ("false", "0"), "select": ()})
        return await out(request, await runtime.state(await thread_or_404(request, thread_id)))

    @router.post(
        "/threads/{thread_id}/state",
        summary="Write values into the thread's state (checked against the graph's update model)",
        openapi_extra=_body(StateUpdate, required=True),
    )
    async def update_state(thread_id: str, request: Request) -> dict[str, Any]:
        body = _parse(StateUpdate, await request.body())
        thread = await thread_or_404(request, thread_id)
        values = body.values or {}
        _check_json(values, limits, "values")
        agent = runtime.agents.get(thread.assistant_id or "")
        if agent is None:
            raise OpenAIError(
                409, f"Thread `{thread_id}` has no state to update yet: run it first.", code="thread_empty"
            )
        try:
            # The same model as a run's `command.update`: what the graph lets a caller write.
            checked = caller_command(
                agent, {"update": values}, schemas_of(agent.assistant_id)["state_schema"]
            )
            checked = checked.get("update", {})
        except ValidationError as exc:
            raise _validation_error(exc, "values") from None
        if thread.active_run_id is not None:
            raise OpenAIError(
                409, "The thread has a run in progress; update it when it ends.", code="thread_busy"
            )
        try:
            return await runtime.update_state(thread, checked)
        except InvalidUpdateError as exc:
            raise OpenAIError(
                409, f"The thread's state cannot be updated: {exc}", code="thread_empty"
            ) from None

    @router.get("/threads/{thread_id}/history", summary="The thread's past states, newest first")
    async def get_history(thread_id: str, request: Request, limit: int = 10) -> list[dict[str, Any]]:
        _query(request, ("limit",), {"before": (), "checkpoint": (), "select": ()})
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
            raise _not_implemented(
                f"multitask_strategy `{body.multitask_strategy}` (use reject or enqueue)",
                "multitask_strategy",
            )
        modes = [body.stream_mode] if isinstance(body.stream_mode, str) else list(body.stream_mode)
        unknown = [m for m in modes if m not in STREAM_MODES + UNSUPPORTED_STREAM_MODES]
        if unknown:
            raise _invalid(f"stream_mode {unknown} is not a LangGraph stream mode.", "stream_mode")
        later = [m for m in modes if m in UNSUPPORTED_STREAM_MODES]
        if later:
            raise _not_implemented(f"stream_mode {later} (use {list(STREAM_MODES)})", "stream_mode")
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
        agent = runtime.agents[body.assistant_id]
        graph_input = None
        if body.input is not None:
            try:
                if agent.builtin:
                    graph_input = AgentInput.model_validate(body.input).model_dump()
                else:  # your own graph: keys and values of its input schema, within the JSON bounds
                    _check_json(body.input, limits, "input")
                    graph_input = check_values(
                        schemas_of(agent.assistant_id)["input_schema"], body.input, "input"
                    )
            except ValidationError as exc:
                raise _validation_error(exc, "input") from None
        _check_json(body.metadata, limits, "metadata")
        run_config = None
        if body.config is not None:
            _check_json(body.config, limits, "config")
            try:
                config = _refuse_unsupported(RunConfig, body.config, "config.")
                run_config = RunConfig.model_validate(config).model_dump(exclude_unset=True)
            except ValidationError as exc:
                raise _validation_error(exc, "config") from None
        command = None
        if body.command is not None:
            given = body.command.model_dump(exclude_none=True)
            for key in ("update", "resume"):
                if key in given:
                    _check_json(given[key], limits, f"command.{key}")
            try:
                command = caller_command(agent, given, schemas_of(agent.assistant_id)["state_schema"])
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
        _query(request, ("limit", "offset"), {"status": (), "select": ()})
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
        _query(request, (), {"cancel_on_disconnect": ("false", "0")})
        return await out(request, await runtime.join(await run_or_404(request, run_id, thread_id)))

    @router.post("/threads/{thread_id}/runs/{run_id}/cancel", summary="Cancel a run")
    async def cancel_thread_run(thread_id: str, run_id: str, request: Request) -> dict[str, Any]:
        # The cancel waits for the run to stop either way; `rollback` (delete it) is not done.
        _query(request, ("wait",), {"action": ("interrupt",)})
        return await run_json(request, await runtime.cancel(await run_or_404(request, run_id, thread_id)))

    @router.get("/runs/{run_id}", summary="One run")
    async def get_run(run_id: str, request: Request) -> dict[str, Any]:
        return await run_json(request, await run_or_404(request, run_id))

    @router.post("/runs/{run_id}/cancel", summary="Cancel a run")
    async def cancel_run(run_id: str, request: Request) -> dict[str, Any]:
        _query(request, ("wait",), {"action": ("interrupt",)})
        return await run_json(request, await runtime.cancel(await run_or_404(request, run_id)))

    # Out of the OpenAPI spec: it lists what WeLIP serves (and its fuzzing wants no 5xx).
    for method, path in NOT_IMPLEMENTED_ROUTES:
        router.add_api_route(
            path, _not_implemented_route(method, path), methods=[method], include_in_schema=False
        )
    return router


def _not_implemented_route(method: str, path: str) -> Callable[[], Awaitable[None]]:
    async def not_implemented() -> None:
        raise _not_implemented(f"`{method} {path}`", None)

    return not_implemented


async def _sse(events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[bytes]:
    async for event, data in events:
        yield f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
