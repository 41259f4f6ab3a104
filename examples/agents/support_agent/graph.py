"""A support agent: a triage subgraph looks the order up, a refund waits for a human's approval,
the answer is written by the LLM through the WeLIP gateway.

Served by import path ``support_agent.graph:make_graph`` from ``graph_paths: [examples/agents]``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph, add_messages
from langgraph.types import interrupt
from typing_extensions import TypedDict

from welip.agents import AgentConfig, gateway_chat_model

# A stand-in for your order system.
ORDERS: dict[str, dict[str, Any]] = {
    "1001": {"item": "keyboard", "amount_eur": 49, "status": "damaged in transit"},
    "1002": {"item": "monitor", "amount_eur": 189, "status": "delivered"},
}


class SupportState(TypedDict, total=False):
    """The conversation, the order it is about, and what was done."""

    messages: Annotated[list[AnyMessage], add_messages]
    order_id: str
    order: dict[str, Any]
    refund: str


@tool
def lookup_order(order_id: str) -> dict[str, Any]:
    """The order's item, amount and status; empty when there is no such order."""
    return dict(ORDERS.get(order_id, {}))


@tool
def issue_refund(order_id: str, amount_eur: int) -> str:
    """Refund an order; answers the refund's id."""
    return f"refund-{order_id}-{amount_eur}eur"


def triage() -> Any:
    """The subgraph: find the order number in the last message, then look the order up."""

    def extract(state: SupportState) -> dict[str, Any]:
        text = str(state["messages"][-1].content)
        found = re.search(r"#?(\d{4,})", text)
        return {"order_id": found.group(1) if found else ""}

    async def lookup(state: SupportState) -> dict[str, Any]:
        if not state.get("order_id"):
            return {"order": {}}
        return {"order": await lookup_order.ainvoke({"order_id": state["order_id"]})}

    graph = StateGraph(SupportState)
    graph.add_node("extract", extract)
    graph.add_node("lookup", lookup)
    graph.add_edge(START, "extract")
    graph.add_edge("extract", "lookup")
    graph.add_edge("lookup", END)
    return graph.compile()


def build(chat_model: Any) -> StateGraph:
    """The support graph around ``chat_model`` (any LangChain chat model)."""

    def route(state: SupportState) -> Literal["approve_refund", "answer"]:
        order = state.get("order") or {}
        return "approve_refund" if order.get("status") == "damaged in transit" else "answer"

    async def approve_refund(state: SupportState) -> dict[str, Any]:
        order = state["order"]
        decision = interrupt(
            {
                "question": f"Refund {order['amount_eur']} EUR for order {state['order_id']}?",
                "order": order,
            }
        )
        if decision is True or (isinstance(decision, dict) and decision.get("approved") is True):
            refund = await issue_refund.ainvoke(
                {"order_id": state["order_id"], "amount_eur": order["amount_eur"]}
            )
            return {"refund": refund}
        return {"refund": "declined"}

    async def answer(state: SupportState) -> dict[str, Any]:
        facts = f"Order: {state.get('order') or 'none found'}. Refund: {state.get('refund', 'none')}."
        prompt = [
            SystemMessage(f"You are a support agent. Answer in two sentences from these facts. {facts}"),
            *[m for m in state["messages"] if isinstance(m, (HumanMessage, AIMessage))][-4:],
        ]
        reply = await chat_model.ainvoke(prompt)
        return {"messages": [AIMessage(str(reply.content), id=reply.id)]}

    graph = StateGraph(SupportState)
    graph.add_node("triage", triage())
    graph.add_node("approve_refund", approve_refund)
    graph.add_node("answer", answer)
    graph.add_edge(START, "triage")
    graph.add_conditional_edges("triage", route, ["approve_refund", "answer"])
    graph.add_edge("approve_refund", "answer")
    graph.add_edge("answer", END)
    return graph


def make_graph(agent: AgentConfig) -> StateGraph:
    """WeLIP calls this once per replica with the assistant's config: its LLM via the gateway."""
    return build(gateway_chat_model(agent.llm))
