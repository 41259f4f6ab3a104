"""The shipped LangGraph graphs: RAG question answering and a ReAct tool agent with approvals.

Each builder takes its collaborators (the chat model, the retriever) and returns an
uncompiled :class:`StateGraph`; the runtime compiles it with the checkpointer. Both
graphs take ``{"messages": [...]}`` as input (:class:`AgentInput`), like a chat.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from typing import Annotated, Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langgraph.graph import END, START, StateGraph, add_messages
from langgraph.types import Command, interrupt
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from typing_extensions import TypedDict

from welip.agents._config import AgentConfig
from welip.agents._custom import check_values
from welip.agents._telemetry import llm_span, record_usage, traced_node
from welip.agents._tools import Retrieving, Tool, build_tools, format_chunks

MAX_MESSAGE_CHARS = 32_000


class InputMessage(BaseModel):
    """One message of a run's input."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "human", "system", "assistant", "ai"] = "user"
    content: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)


class AgentInput(BaseModel):
    """The input of every shipped graph: the new messages of the conversation."""

    model_config = ConfigDict(extra="forbid")
    messages: list[InputMessage] = Field(min_length=1, max_length=100)


class RagUpdate(BaseModel):
    """The state a caller may write into a RAG thread with ``command.update``: none.

    Messages come in as a run's ``input``; the retrieved context and citations are the graph's.
    """

    model_config = ConfigDict(extra="forbid")


class ReactUpdate(BaseModel):
    """The state a caller may write into a ReAct thread: ``steps`` (tool calls counted towards
    ``max_steps``) set back, never below 0 nor past the agent's bound. Messages are not: the
    approval and tool nodes act on the last message, which must stay the agent's tool call."""

    model_config = ConfigDict(extra="forbid")
    steps: int | None = Field(None, ge=0, le=50)

    @field_validator("steps")
    @classmethod
    def _within_max_steps(cls, steps: int | None, info: ValidationInfo) -> int | None:
        limit = (info.context or {}).get("max_steps")
        if steps is not None and limit is not None and steps > limit:
            raise ValueError(f"steps must be between 0 and the agent's max_steps ({limit})")
        return steps


@dataclass(frozen=True)
class CallerCommands:
    """What a caller's ``command`` may do to a run of a graph.

    Attributes:
        goto: Nodes a caller may send the run to. None of the shipped graphs has one: a
            run resumes where the graph stopped (``command.resume``), so a caller cannot
            skip an approval or run a tool the model did not choose.
        update: The state keys a caller may write, with their types (``command.update``).
    """

    goto: tuple[str, ...]
    update: type[BaseModel]


class RagState(TypedDict, total=False):
    """State of the RAG graph."""

    messages: Annotated[list[AnyMessage], add_messages]
    context: list[dict[str, Any]]
    citations: list[dict[str, Any]]


class ReactState(TypedDict, total=False):
    """State of the ReAct graph."""

    messages: Annotated[list[AnyMessage], add_messages]
    steps: int


RAG_SYSTEM_PROMPT = (
    "You answer questions about WeLIP using only the context below. "
    "Cite the chunk ids you used in square brackets, like [{example}]. "
    "If the context does not answer the question, say so.\n\nContext:\n{context}"
)

REACT_SYSTEM_PROMPT = (
    "You are a helpful assistant that can use tools. Tools:\n{tools}\n"
    "Reply with JSON: a short `thought`, an `action` (a tool name, or final_answer), and "
    "`action_input` (the tool's input, or your answer to the user). "
    "Use a tool when it helps, then give the final_answer."
)


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)


def last_question(messages: Sequence[BaseMessage]) -> str:
    """The text of the last human message."""
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return _text(message)
    return ""


def _chat_history(messages: Sequence[BaseMessage], max_chars: int) -> list[BaseMessage]:
    """The conversation as the LLM sees it: the latest messages within ``max_chars``."""
    history = _as_chat(messages)
    kept: list[BaseMessage] = []
    used = 0
    for message in reversed(history):
        size = len(_text(message))
        if kept and used + size > max_chars:
            break
        kept.append(message)
        used += size
    return kept[::-1]


def _as_chat(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    # Small chat templates know only system/user/assistant: tool traffic becomes text.
    history: list[BaseMessage] = []
    for message in messages:
        if isinstance(message, ToolMessage):
            history.append(HumanMessage(f"Observation from {message.name or 'tool'}: {_text(message)}"))
        elif isinstance(message, AIMessage) and message.tool_calls:
            call = message.tool_calls[0]
            action = {
                "thought": _text(message),
                "action": call["name"],
                "action_input": call["args"]["input"],
            }
            history.append(AIMessage(json.dumps(action)))
        elif isinstance(message, (HumanMessage, AIMessage, SystemMessage)):
            history.append(message)
    return history


def build_rag_graph(config: AgentConfig, chat_model: BaseChatModel, retriever: Retrieving) -> StateGraph:
    """Retrieve chunks for the last question, answer from them, cite the chunk ids.

    Raises:
        ValueError: the config has no ``retrieval`` (``AgentConfig`` refuses that for a RAG agent).
    """
    retrieval = config.retrieval
    if retrieval is None:
        raise ValueError(f"assistant {config.assistant_id!r}: graph rag needs `retrieval`")
    system_prompt = config.system_prompt or RAG_SYSTEM_PROMPT

    async def retrieve(state: RagState, _: Any) -> dict[str, Any]:
        chunks = await retriever.retrieve(last_question(state["messages"]))
        return {"context": [_as_dict(c) for c in chunks]}

    async def generate(state: RagState, _: Any) -> dict[str, Any]:
        chunks = [_Chunk(**c) for c in state.get("context", [])]
        example = chunks[0].chunk_id if chunks else "a1b2c3d4"
        system = system_prompt.format(
            context=format_chunks(chunks, retrieval.max_context_chars), example=example
        )
        prompt = [SystemMessage(system), *_chat_history(state["messages"], config.max_history_chars)]
        with llm_span(config.llm.model) as span:
            reply = await chat_model.ainvoke(prompt)
            record_usage(span, reply)
        answer = _text(reply).strip()
        named = set(re.findall(r"\[([0-9A-Za-z_-]{4,64})\]", answer))
        citations = [
            {
                "chunk_id": c.chunk_id,
                "source": c.source,
                "title": c.title,
                "cited_in_answer": c.chunk_id in named,
            }
            for c in chunks
        ]
        sources = "; ".join(f"[{c['chunk_id']}] {c['title']} ({c['source']})" for c in citations)
        content = f"{answer}\n\nSources: {sources}" if citations else answer
        message = AIMessage(
            content=content, id=reply.id, usage_metadata=getattr(reply, "usage_metadata", None)
        )
        return {"messages": [message], "citations": citations}

    graph = StateGraph(RagState)
    graph.add_node("retrieve", traced_node(config.assistant_id, "retrieve", "RETRIEVER", retrieve))
    graph.add_node("generate", traced_node(config.assistant_id, "generate", "CHAIN", generate))
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "generate")
    graph.add_edge("generate", END)
    return graph


def action_schema(tool_names: list[str]) -> dict[str, Any]:
    """The JSON schema every ReAct step is decoded against (vLLM guided decoding)."""
    return {
        "type": "object",
        "properties": {
            "thought": {"type": "string", "maxLength": 300},
            "action": {"type": "string", "enum": [*tool_names, "final_answer"]},
            "action_input": {"type": "string", "maxLength": 500},
        },
        "required": ["thought", "action", "action_input"],
        "additionalProperties": False,
    }


def parse_action(text: str, tool_names: list[str]) -> dict[str, str]:
    """A step's JSON; anything unparseable is taken as the final answer."""
    try:
        action = json.loads(text)
    except json.JSONDecodeError:
        return {"thought": "", "action": "final_answer", "action_input": text.strip()}
    if not isinstance(action, dict) or action.get("action") not in [*tool_names, "final_answer"]:
        return {"thought": "", "action": "final_answer", "action_input": text.strip()}
    return {
        "thought": str(action.get("thought", "")),
        "action": str(action["action"]),
        "action_input": str(action.get("action_input", "")),
    }


def approved(answer: Any) -> bool:
    """Whether a resume value approves: ``true``, ``{"approved": true}`` or a yes-word."""
    if isinstance(answer, dict):
        answer = answer.get("approved", answer.get("approve"))
    if isinstance(answer, bool):
        return answer
    return isinstance(answer, str) and answer.strip().lower() in {"yes", "y", "approve", "approved", "true"}


def build_react_graph(
    config: AgentConfig, chat_model: BaseChatModel, retriever: Retrieving | None
) -> StateGraph:
    """A ReAct loop: the model picks a tool or answers; sensitive tools wait for approval."""
    max_context = config.retrieval.max_context_chars if config.retrieval else 3000
    tools: dict[str, Tool] = {t.name: t for t in build_tools(config.tools, retriever, max_context)}
    names = list(tools)
    sensitive = set(config.sensitive_tools)
    listing = "\n".join(
        f"- {t.name}: {t.description}{' (asks a human first)' if t.name in sensitive else ''}"
        for t in tools.values()
    )
    system = (config.system_prompt or REACT_SYSTEM_PROMPT).format(tools=listing)
    schema = {"type": "json_schema", "json_schema": {"name": "action", "schema": action_schema(names)}}
    decide_model = chat_model.bind(response_format=schema)

    async def agent(state: ReactState, _: Any) -> dict[str, Any]:
        # max_steps bounds each run: a caller's new question starts the count again.
        steps = 0 if isinstance(state["messages"][-1], HumanMessage) else state.get("steps", 0)
        if steps >= config.max_steps:
            return {"messages": [AIMessage(f"I stopped after {steps} tool calls without a final answer.")]}
        with llm_span(config.llm.model) as span:
            history = _chat_history(state["messages"], config.max_history_chars)
            reply = await decide_model.ainvoke([SystemMessage(system), *history])
            record_usage(span, reply)
        action = parse_action(_text(reply), names)
        usage = getattr(reply, "usage_metadata", None)
        if action["action"] == "final_answer":
            answer = AIMessage(action["action_input"], id=reply.id, usage_metadata=usage)
            return {"messages": [answer], "steps": steps}
        call = {
            "name": action["action"],
            "args": {"input": action["action_input"]},
            "id": f"call_{uuid.uuid4().hex[:12]}",
        }
        return {
            "messages": [AIMessage(action["thought"], id=reply.id, tool_calls=[call], usage_metadata=usage)],
            "steps": steps,
        }

    async def approve(state: ReactState, _: Any) -> Command[Literal["tools", "agent"]]:
        call = state["messages"][-1].tool_calls[0]  # type: ignore[union-attr]
        answer = interrupt(
            {
                "question": f"Allow the agent to run {call['name']} with input {call['args']['input']!r}?",
                "tool": call["name"],
                "input": call["args"]["input"],
            }
        )
        if approved(answer):
            return Command(goto="tools")
        declined = ToolMessage("A human declined this action.", tool_call_id=call["id"], name=call["name"])
        return Command(goto="agent", update={"messages": [declined], "steps": state.get("steps", 0) + 1})

    async def run_tools(state: ReactState, _: Any) -> dict[str, Any]:
        call = state["messages"][-1].tool_calls[0]  # type: ignore[union-attr]
        try:
            result = await asyncio.wait_for(
                tools[call["name"]].run(call["args"]["input"]), timeout=config.tool_timeout_s
            )
        except TimeoutError:
            result = f"error: {call['name']} took longer than {config.tool_timeout_s:g} s"
        except Exception as exc:  # noqa: BLE001 - a failing tool is an observation, not a failed run
            result = f"error: {call['name']} failed: {exc}"[:1000]
        message = ToolMessage(result, tool_call_id=call["id"], name=call["name"])
        return {"messages": [message], "steps": state.get("steps", 0) + 1}

    def route(state: ReactState) -> str:
        last = state["messages"][-1]
        if isinstance(last, AIMessage) and last.tool_calls:
            return "approve" if last.tool_calls[0]["name"] in sensitive else "tools"
        return END

    aid = config.assistant_id
    graph = StateGraph(ReactState)
    graph.add_node("agent", traced_node(aid, "agent", "AGENT", agent))
    graph.add_node("approve", traced_node(aid, "approve", "CHAIN", approve), destinations=("tools", "agent"))
    graph.add_node("tools", traced_node(aid, "tools", "TOOL", run_tools))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["approve", "tools", END])
    graph.add_edge("tools", "agent")
    return graph


GRAPHS: dict[str, Callable[[AgentConfig, BaseChatModel, Any], StateGraph]] = {
    "rag": build_rag_graph,
    "react": build_react_graph,
}

COMMANDS: dict[str, CallerCommands] = {
    "rag": CallerCommands(goto=(), update=RagUpdate),
    "react": CallerCommands(goto=(), update=ReactUpdate),
}


def caller_command(
    config: AgentConfig, command: dict[str, Any], state_schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A caller's ``command`` (``resume``, ``update``, ``goto``), checked against what the agent's
    graph declares: a shipped graph's :data:`COMMANDS`; for your own graph, an ``update`` of
    keys of its state (``state_schema``, values matching it) and no ``goto``.

    Returns:
        The command to run: ``update`` as checked, ``goto`` only where allowed.

    Raises:
        ValueError: a ``goto`` the graph does not allow.
        pydantic.ValidationError: an ``update`` outside the graph's update model or state (its
            ``loc`` names the field).
    """
    allowed = COMMANDS.get(config.graph, CallerCommands(goto=(), update=RagUpdate))
    checked: dict[str, Any] = {}
    if "resume" in command:
        checked["resume"] = command["resume"]
    goto = command.get("goto")
    if goto:
        targets = [goto] if isinstance(goto, str) else list(goto)
        refused = [t for t in targets if t not in allowed.goto]
        if refused:
            raise ValueError(
                f"goto {refused} is not allowed for assistant `{config.assistant_id}`"
                + (f"; allowed: {list(allowed.goto)}" if allowed.goto else ": a run resumes where it stopped")
            )
        checked["goto"] = targets
    if command.get("update") is not None:
        if config.builtin:
            update = allowed.update.model_validate(command["update"], context={"max_steps": config.max_steps})
            checked["update"] = update.model_dump(exclude_none=True)
        else:
            checked["update"] = check_values(state_schema or {}, command["update"], "state")
    return checked


class _Chunk:
    def __init__(
        self, chunk_id: str, source: str, title: str, text: str, score: float = 0.0, **_: Any
    ) -> None:
        self.chunk_id, self.source, self.title, self.text, self.score = chunk_id, source, title, text, score


def _as_dict(chunk: Any) -> dict[str, Any]:
    if is_dataclass(chunk) and not isinstance(chunk, type):
        return asdict(chunk)
    return dict(chunk)
