"""Your own LangGraph graphs, named by import path as ``langgraph.json`` names them.

An assistant's ``graph: package.module:attr`` is imported from the app's ``graph_paths``
(local folders: shipped in the image or a mounted volume). ``attr`` is one of:

- a compiled graph: served with WeLIP's checkpointer in place of its own;
- a ``StateGraph``: compiled here with WeLIP's checkpointer;
- a factory returning either: with no parameter, called once as the replica starts; with one
  parameter annotated ``AgentConfig``, called once with the assistant's config (its ``llm``
  for :func:`welip.agents.gateway_chat_model`); with any other single parameter, called for
  every run with the run's ``RunnableConfig``, as LangGraph's server calls factories (and
  once as the replica starts with an empty one, for the schemas and state reads).
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import typing
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from jsonschema import Draft202012Validator
from langchain_core.messages import convert_to_messages
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel
from pydantic import TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from welip.agents._config import AgentConfig


def import_graph(path: str, graph_paths: Sequence[str] = ()) -> Any:
    """The object ``package.module:attr`` names, ``graph_paths`` added at the end of ``sys.path``.

    At the end: a graph folder cannot shadow the standard library, WeLIP or any installed
    package (a module of its own named ``json`` or ``welip`` is never imported in their place).

    Raises:
        ValueError: the path is malformed, or its module or attribute cannot be imported
            (the message names the path and the cause).
    """
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"graph {path!r} is not an import path `package.module:attr`")
    for folder in graph_paths:
        if folder not in sys.path:
            sys.path.append(folder)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"graph {path}: cannot import {module_name} ({type(exc).__name__}: {exc})") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"graph {path}: module {module_name} has no attribute {attr}") from None


def _is_agent_config(parameter: inspect.Parameter, hints: dict[str, Any]) -> bool:
    hint = hints.get(parameter.name, parameter.annotation)
    return hint is AgentConfig or (isinstance(hint, str) and hint.split(".")[-1] == "AgentConfig")


def _factory_kind(factory: Callable[..., Any]) -> str:
    """``none``, ``agent`` or ``run``: what the factory takes (see the module's docstring)."""
    try:
        parameters = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return "none"
    required = [
        p
        for p in parameters
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not required:
        return "none"
    if len(required) > 1:
        raise ValueError(f"a graph factory takes at most one argument, not {[p.name for p in required]}")
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # noqa: BLE001 - unresolvable annotations: read them as written
        hints = {}
    return "agent" if _is_agent_config(required[0], hints) else "run"


def _compiled(value: Any, checkpointer: Any, name: str) -> Pregel:
    if isinstance(value, StateGraph):
        return value.compile(checkpointer=checkpointer, name=name)
    if isinstance(value, Pregel):
        return value.copy(update={"checkpointer": checkpointer})
    raise ValueError(f"it gave a {type(value).__name__}, not a StateGraph or compiled graph")


class PerRunGraph:
    """A graph built by its factory for every run, from the run's ``RunnableConfig``.

    Everything but running (schemas, state, history, updates) goes to the graph the factory
    built with an empty config as the replica started.
    """

    def __init__(self, factory: Callable[[Any], Any], checkpointer: Any, name: str, base: Pregel) -> None:
        self._factory = factory
        self._checkpointer = checkpointer
        self._name = name
        self.base = base

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.base, attr)

    async def astream(self, graph_input: Any, config: Any, **kwargs: Any) -> AsyncIterator[Any]:
        graph = _compiled(self._factory(config), self._checkpointer, self._name)
        async for item in graph.astream(graph_input, config, **kwargs):
            yield item


def load_graph(agent: AgentConfig, checkpointer: Any, graph_paths: Sequence[str] = ()) -> Any:
    """The assistant's own graph, compiled with ``checkpointer`` (see the module's docstring).

    Raises:
        ValueError: naming the assistant and the path, when the graph cannot be imported or built.
    """
    where = f"assistant {agent.assistant_id!r}, graph {agent.graph}"
    try:
        value = import_graph(agent.graph, graph_paths)
        if isinstance(value, (StateGraph, Pregel)):
            return _compiled(value, checkpointer, agent.assistant_id)
        if not callable(value):
            raise ValueError(f"{type(value).__name__} is neither a graph nor a factory")
        kind = _factory_kind(value)
        if kind == "run":
            base = _compiled(value({"configurable": {}}), checkpointer, agent.assistant_id)
            return PerRunGraph(value, checkpointer, agent.assistant_id, base)
        return _compiled(value(agent) if kind == "agent" else value(), checkpointer, agent.assistant_id)
    except Exception as exc:
        raise ValueError(f"{where}: {exc}") from exc


def graph_schemas(graph: Any) -> dict[str, Any]:
    """The graph's input, output, state, config and context JSON schemas (LangGraph's ``GraphSchema``)."""
    graph = getattr(graph, "base", graph)
    builder = getattr(graph, "builder", None)
    try:
        state = TypeAdapter(builder.state_schema).json_schema() if builder is not None else None
    except Exception:  # noqa: BLE001 - a state type pydantic cannot describe: its output channels
        state = None
    return {
        "input_schema": graph.get_input_jsonschema(),
        "output_schema": graph.get_output_jsonschema(),
        "state_schema": state or graph.get_output_jsonschema(),
        "config_schema": _config_jsonschema(graph),
        "context_schema": graph.get_context_jsonschema(),
    }


def _config_jsonschema(graph: Any) -> dict[str, Any]:
    with warnings.catch_warnings():  # deprecated for the context schema, still what LangGraph serves
        warnings.simplefilter("ignore")
        return dict(graph.get_config_jsonschema())


def _error(key: str, message: str, value: Any) -> InitErrorDetails:
    return {
        "type": PydanticCustomError("value_error", "{message}", {"message": message}),
        "loc": (key,),
        "input": value,
    }


def _are_messages(value: Any) -> bool:
    """Whether LangChain converts ``value`` to messages (as ``add_messages`` will)."""
    try:
        convert_to_messages(value if isinstance(value, list) else [value])
    except Exception:  # noqa: BLE001 - any failure: not messages
        return False
    return True


def check_values(schema: dict[str, Any], values: dict[str, Any], title: str) -> dict[str, Any]:
    """``values`` if every key is a property of ``schema`` and every value matches it.

    Messages are taken in any form LangChain converts (``{"role": "user", "content": ...}``).

    Raises:
        pydantic.ValidationError: its ``loc`` names the first key refused.
    """
    properties: dict[str, Any] = schema.get("properties") or {}
    defs = schema.get("$defs") or {}
    errors: list[InitErrorDetails] = []
    for key, value in values.items():
        if key not in properties:
            errors.append(_error(key, f"not a key of the graph's {title}: {sorted(properties)}", value))
            continue
        validator = Draft202012Validator({**properties[key], "$defs": defs})
        problem = next(iter(validator.iter_errors(value)), None)
        if problem is None:
            continue
        if "Message" in json.dumps(properties[key]) and _are_messages(value):
            continue
        errors.append(_error(key, problem.message[:300], value))
    if errors:
        raise ValidationError.from_exception_data(title, errors[:1])
    return values
