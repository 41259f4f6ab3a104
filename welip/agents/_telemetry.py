"""Spans and metrics of agent runs: a span per run and per graph node, OpenInference kinds.

The run span is current while the graph runs, so node spans nest under it and the
LLM calls a node makes (through the gateway, ``traceparent`` injected into the
request) nest under the node.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from langchain_core.runnables import RunnableConfig
from opentelemetry import trace
from ray.util import metrics

from welip.observability import model_attributes, token_attributes

tracer = trace.get_tracer("welip.agents")


class AgentMetrics:
    """Prometheus series of the agents app, exported through Ray's metrics agent."""

    def __init__(self) -> None:
        self.runs = metrics.Counter(
            "welip_agent_runs",
            description="Agent runs finished, by assistant and final status.",
            tag_keys=("assistant", "status"),
        )
        self.run_latency = metrics.Histogram(
            "welip_agent_run_latency_s",
            description="Time from a run's start to its end (queue wait excluded).",
            boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
            tag_keys=("assistant",),
        )
        self.node_latency = metrics.Histogram(
            "welip_agent_node_latency_s",
            description="Time spent in one graph node.",
            boundaries=[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
            tag_keys=("assistant", "node"),
        )
        self.interrupts = metrics.Counter(
            "welip_agent_interrupts",
            description="Runs that stopped at an interrupt, waiting for a human.",
            tag_keys=("assistant",),
        )


_metrics: AgentMetrics | None = None


def agent_metrics() -> AgentMetrics:
    """The process's agent metrics (created on first use, once)."""
    global _metrics
    if _metrics is None:
        _metrics = AgentMetrics()
    return _metrics


def _thread_id(config: Any) -> str | None:
    configurable = (config or {}).get("configurable") or {}
    value = configurable.get("thread_id")
    return str(value) if value is not None else None


def traced_node(assistant_id: str, name: str, kind: str, fn: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    """``fn`` as a graph node with a span of OpenInference ``kind`` and a latency metric."""

    async def node(state: Any, config: RunnableConfig) -> Any:
        attributes = {
            "openinference.span.kind": kind,
            "welip.agent.node": name,
            "welip.assistant_id": assistant_id,
        }
        thread_id = _thread_id(config)
        if thread_id:
            attributes["session.id"] = thread_id
        started = time.perf_counter()
        with tracer.start_as_current_span(f"{assistant_id}.{name}", attributes=attributes):
            try:
                return await fn(state, config)
            finally:
                agent_metrics().node_latency.observe(
                    time.perf_counter() - started, tags={"assistant": assistant_id, "node": name}
                )

    node.__name__ = name
    return node


@contextlib.contextmanager
def llm_span(model: str) -> Iterator[Any]:
    """A client-side LLM span around one chat call (the gateway adds its own under it)."""
    attributes = {"openinference.span.kind": "LLM", **model_attributes(model)}
    with tracer.start_as_current_span("llm.chat", attributes=attributes) as span:
        yield span


def record_usage(span: Any, message: Any) -> None:
    """Token counts of an LLM answer on its span (OpenInference and OTel GenAI names)."""
    usage = getattr(message, "usage_metadata", None) or {}
    span.set_attributes(token_attributes(usage.get("input_tokens"), usage.get("output_tokens")))
