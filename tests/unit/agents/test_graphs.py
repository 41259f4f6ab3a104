"""Pieces of the shipped graphs: what the LLM sees, how its steps parse, the tools."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from welip.agents import AgentConfig, calculate
from welip.agents._graphs import _chat_history, action_schema, approved, build_rag_graph, parse_action
from welip.agents._tools import current_time


def test_history_keeps_the_latest_messages_within_the_budget() -> None:
    messages = [HumanMessage("q" * 1000 + str(i)) if i % 2 == 0 else AIMessage("a" * 1000) for i in range(10)]
    kept = _chat_history(messages, 2500)
    assert len(kept) == 2 and kept[0].content.endswith("8") and kept[1].content == "a" * 1000
    # The last message is kept even when it alone is over the budget.
    assert _chat_history([HumanMessage("x" * 5000)], 100)[0].content == "x" * 5000


def test_tool_traffic_reaches_the_llm_as_plain_chat() -> None:
    call = {"name": "calculator", "args": {"input": "2+2"}, "id": "c1"}
    messages = [
        HumanMessage("2+2?"),
        AIMessage("use calc", tool_calls=[call]),
        ToolMessage("4", tool_call_id="c1", name="calculator"),
    ]
    chat = _chat_history(messages, 10_000)
    assert json.loads(chat[1].content) == {
        "thought": "use calc",
        "action": "calculator",
        "action_input": "2+2",
    }
    assert isinstance(chat[2], HumanMessage) and chat[2].content == "Observation from calculator: 4"


def test_steps_parse_or_fall_back_to_a_final_answer() -> None:
    tools = ["calculator"]
    step = parse_action('{"thought": "t", "action": "calculator", "action_input": "1+1"}', tools)
    assert step["action"] == "calculator" and step["action_input"] == "1+1"
    assert parse_action("plain words", tools) == {
        "thought": "",
        "action": "final_answer",
        "action_input": "plain words",
    }
    assert parse_action('{"action": "rm -rf"}', tools)["action"] == "final_answer"
    assert action_schema(tools)["properties"]["action"]["enum"] == ["calculator", "final_answer"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (True, True),
        ({"approved": True}, True),
        ("yes", True),
        (False, False),
        ({"approved": False}, False),
        ("no", False),
        (None, False),
    ],
)
def test_approval_answers(answer: object, expected: bool) -> None:
    assert approved(answer) is expected


def test_calculator_is_arithmetic_only() -> None:
    assert calculate("(17 + 5) * 3") == "66"
    assert calculate("17 * 23 = ?") == "391"
    assert calculate("sqrt(16) + 2^3") == "12"
    assert calculate("1/0") == "error: division by zero"
    assert calculate("__import__('os').system('true')").startswith("error")
    assert calculate("9 ** 9 ** 9").startswith("error: result too large")
    assert calculate("") == "error: empty expression"


def test_current_time_names_bad_zones() -> None:
    assert current_time("").endswith("+00:00")
    assert current_time("Asia/Seoul").endswith("+09:00")
    assert "unknown time zone" in current_time("Mars/Olympus")


def test_agent_config_refuses_inconsistent_tools() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="sensitive_tools not in tools"):
        AgentConfig.model_validate(
            {
                "assistant_id": "a",
                "name": "a",
                "graph": "react",
                "tools": ["calculator"],
                "sensitive_tools": ["create_ticket"],
            }
        )
    with pytest.raises(ValidationError, match="graph rag needs `retrieval`"):
        AgentConfig.model_validate({"assistant_id": "a", "name": "a", "graph": "rag"})
    with pytest.raises(ValidationError, match="extra"):
        AgentConfig.model_validate(
            {"assistant_id": "a", "name": "a", "graph": "react", "tools": ["calculator"], "shell": True}
        )


def test_a_tool_that_overruns_tool_timeout_s_is_an_error_observation() -> None:
    import asyncio
    import time

    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    from welip.agents import build_react_graph

    class HangingRetriever:
        async def retrieve(self, query: str) -> list[object]:
            await asyncio.sleep(60)
            return []

    config = AgentConfig.model_validate(
        {
            "assistant_id": "a",
            "name": "a",
            "graph": "react",
            "tools": ["retrieve"],
            "retrieval": {"table": "t"},
            "tool_timeout_s": 0.2,
        }
    )
    step = {"thought": "t", "action": "retrieve", "action_input": "keys"}
    answer = {"thought": "t", "action": "final_answer", "action_input": "done"}
    model = GenericFakeChatModel(messages=iter([AIMessage(json.dumps(step)), AIMessage(json.dumps(answer))]))
    graph = build_react_graph(config, model, HangingRetriever()).compile()
    started = time.perf_counter()
    state = asyncio.run(graph.ainvoke({"messages": [HumanMessage("keys?")]}))
    assert time.perf_counter() - started < 5
    (observation,) = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    assert observation.content == "error: retrieve took longer than 0.2 s"
    assert state["messages"][-1].content == "done"


def test_every_graph_declares_what_a_callers_command_may_do() -> None:
    from welip.agents._graphs import COMMANDS, GRAPHS

    assert set(COMMANDS) == set(GRAPHS)
    assert all(c.goto == () for c in COMMANDS.values())  # no shipped graph lets a caller jump


def test_max_steps_bounds_each_run_not_the_threads_lifetime() -> None:
    import asyncio

    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langgraph.checkpoint.memory import InMemorySaver

    from welip.agents import build_react_graph

    config = AgentConfig.model_validate(
        {"assistant_id": "a", "name": "a", "graph": "react", "tools": ["calculator"], "max_steps": 2}
    )
    step = json.dumps({"thought": "t", "action": "calculator", "action_input": "2+2"})
    answer = json.dumps({"thought": "t", "action": "final_answer", "action_input": "4"})
    model = GenericFakeChatModel(messages=iter([AIMessage(text) for text in (step, answer, step, answer)]))
    graph = build_react_graph(config, model, None).compile(checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "t"}}

    async def ask() -> str:
        state = await graph.ainvoke({"messages": [HumanMessage("2+2?")]}, thread)
        return str(state["messages"][-1].content)

    assert asyncio.run(ask()) == "4"
    # The second question on the thread gets its own tool call, not "I stopped after 2 tool calls".
    assert asyncio.run(ask()) == "4"


def test_a_rag_graph_without_retrieval_is_refused_even_unvalidated() -> None:
    # AgentConfig refuses it; an unvalidated config must not reach the graph (nor rely on an assert).
    config = AgentConfig.model_construct(assistant_id="a", name="a", graph="rag", retrieval=None)
    with pytest.raises(ValueError, match="graph rag needs `retrieval`"):
        build_rag_graph(config, chat_model=None, retriever=None)  # type: ignore[arg-type]
