"""Agents: LangGraph graphs served with the Agent Protocol (threads, runs, streams, interrupts).

State is durable and shared by every replica: LangGraph's checkpointer on WeLIP's
database (PostgreSQL, or the SQLite file by default), threads, runs and the ``/store``
API's items in the metadata tables. The agents' LLM calls go through the WeLIP gateway.

Besides the shipped graphs (``rag``, ``react``), an assistant serves your own graph,
named by import path (``package.module:attr``) and imported from the app's
``graph_paths``; its LLM is :func:`gateway_chat_model`.
"""

from welip.agents._api import OutputGuard, build_agents_router
from welip.agents._app import (
    build_agents_app,
    chat_model,
    compile_graphs,
    gateway_chat_model,
    open_checkpointer,
)
from welip.agents._caller import CALLER_TOKEN_HEADER, caller_token, send_caller_token
from welip.agents._config import (
    AgentConfig,
    AgentsConfig,
    CallerJsonLimits,
    ChatModelConfig,
    RetrievalConfig,
    StoreConfig,
    load_agent_config,
    resolve_agents,
    resolve_graph_paths,
)
from welip.agents._custom import PerRunGraph, graph_schemas, import_graph, load_graph
from welip.agents._graphs import GRAPHS, AgentInput, build_rag_graph, build_react_graph
from welip.agents._kvstore import ItemStore, StoreItem, build_store_router
from welip.agents._runtime import AgentRuntime, snapshot_json
from welip.agents._store import AgentStore, RunRow
from welip.agents._tools import Tool, build_tools, calculate

__all__ = [
    "CALLER_TOKEN_HEADER",
    "GRAPHS",
    "AgentConfig",
    "AgentInput",
    "AgentRuntime",
    "AgentStore",
    "AgentsConfig",
    "CallerJsonLimits",
    "ChatModelConfig",
    "ItemStore",
    "OutputGuard",
    "PerRunGraph",
    "RetrievalConfig",
    "RunRow",
    "StoreConfig",
    "StoreItem",
    "Tool",
    "build_agents_app",
    "build_agents_router",
    "build_rag_graph",
    "build_react_graph",
    "build_store_router",
    "build_tools",
    "calculate",
    "caller_token",
    "chat_model",
    "compile_graphs",
    "gateway_chat_model",
    "graph_schemas",
    "import_graph",
    "load_agent_config",
    "load_graph",
    "open_checkpointer",
    "resolve_agents",
    "resolve_graph_paths",
    "send_caller_token",
    "snapshot_json",
]
