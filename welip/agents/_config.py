"""Configuration of the agents app and of each shipped agent (``configs/agents/*.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from welip.config import StrictModel, load_config

ToolName = Literal["calculator", "current_time", "retrieve", "create_ticket"]


class ChatModelConfig(StrictModel):
    """The LLM an agent calls: any OpenAI-compatible endpoint, by default the WeLIP gateway."""

    base_url: str = Field(
        "http://127.0.0.1:8000/v1",
        description="OpenAI-compatible base URL; the gateway, so limits, audit and traces apply.",
    )
    model: str = Field("smollm2-135m-instruct", min_length=1, max_length=128)
    api_key_env: str | None = Field(
        "WELIP_AGENTS_API_KEY",
        description="Environment variable holding the agents' service key; unset or empty: no key.",
    )
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(256, gt=0, le=8192)
    timeout_s: float = Field(120, gt=0, le=3600)
    max_retries: int = Field(1, ge=0, le=10)


class RetrievalConfig(StrictModel):
    """Where an agent retrieves from: a LanceDB table written by ``jobs/ingest.py``."""

    table: str = Field("welip_docs", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
    storage_url: str | None = Field(None, description="LanceDB folder; default $WELIP_STORAGE_URL/rag.")
    embeddings_model: str = Field(
        "all-minilm-l6-v2", description="Served embeddings model (the one the table was built with)."
    )
    embeddings_base_url: str | None = Field(None, description="Default: the chat model's base_url.")
    top_k: int = Field(4, gt=0, le=50)
    mode: Literal["hybrid", "vector", "fts"] = "hybrid"
    max_context_chars: int = Field(3000, gt=0, le=200_000, description="Retrieved text given to the LLM.")


BUILTIN_GRAPHS = ("rag", "react")
GRAPH_PATH = r"^(rag|react|[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*)$"


class AgentConfig(StrictModel):
    """One assistant: a shipped graph (``rag``, ``react``) or your own, with its model, tools and prompts.

    Your own graph is named by import path, ``package.module:attr``, as in LangGraph's
    ``langgraph.json`` (see :func:`welip.agents.load_graph`); it is imported from the app's
    ``graph_paths``. ``llm`` is the model its factory may hand to
    :func:`welip.agents.gateway_chat_model`; ``retrieval``, ``tools`` and ``sensitive_tools``
    configure the shipped graphs only.
    """

    assistant_id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    name: str = Field(min_length=1, max_length=128)
    description: str = Field("", max_length=2000)
    graph: str = Field(
        pattern=GRAPH_PATH,
        max_length=256,
        description="`rag`, `react`, or your graph's import path `package.module:attr`.",
    )
    llm: ChatModelConfig = Field(default_factory=ChatModelConfig)
    retrieval: RetrievalConfig | None = None
    system_prompt: str | None = Field(None, max_length=20_000)
    tools: list[ToolName] = Field(default_factory=list)
    sensitive_tools: list[ToolName] = Field(
        default_factory=list, description="Tools that wait for a human's approval (an interrupt)."
    )
    max_steps: int = Field(6, gt=0, le=50, description="Tool calls per run before the agent must answer.")
    tool_timeout_s: float = Field(
        30,
        gt=0,
        le=3600,
        description="A tool call still going after this is cancelled; the agent sees an error observation.",
    )
    max_history_chars: int = Field(
        3000,
        gt=0,
        le=1_000_000,
        description="Latest conversation sent to the LLM (the last message always), to fit its context.",
    )

    @property
    def builtin(self) -> bool:
        """Whether the graph is one WeLIP ships (``rag``, ``react``), not an import path."""
        return self.graph in BUILTIN_GRAPHS

    @model_validator(mode="after")
    def _consistent(self) -> AgentConfig:
        if not self.builtin and (self.tools or self.sensitive_tools or self.retrieval):
            raise ValueError(
                "`tools`, `sensitive_tools` and `retrieval` configure the shipped graphs; "
                f"graph {self.graph} brings its own"
            )
        if self.graph == "rag" and self.retrieval is None:
            raise ValueError("graph rag needs `retrieval`")
        if "retrieve" in self.tools and self.retrieval is None:
            raise ValueError("tool `retrieve` needs `retrieval`")
        unknown = sorted(set(self.sensitive_tools) - set(self.tools))
        if unknown:
            raise ValueError(f"sensitive_tools not in tools: {unknown}")
        if self.graph == "react" and not self.tools:
            raise ValueError("graph react needs at least one tool")
        return self


class CallerJsonLimits(StrictModel):
    """Bounds on the free-form JSON a caller stores or hands to a graph.

    Each of thread ``metadata`` (as created, and as merged by a PATCH), the ``metadata`` filter
    of a thread search, run ``metadata``, run ``config``, ``command.update``,
    ``command.resume``, the ``input`` of your own graphs, a store item's ``value`` and a store
    search's ``filter`` is checked on its own; past a bound the request is answered 422
    ``invalid_input`` naming the field.
    """

    max_bytes: int = Field(16_384, gt=0, le=1_048_576, description="Size as compact UTF-8 JSON.")
    max_keys: int = Field(128, gt=0, le=10_000, description="Object keys, counted at every depth.")
    max_depth: int = Field(8, gt=0, le=64, description="Nesting of objects and arrays (a flat object is 1).")


class StoreConfig(StrictModel):
    """LangGraph's ``/store`` API: bounds per owner, TTLs, and the embeddings semantic search uses.

    Items put with ``index`` (by default: ``index_fields``) are embedded through
    ``embeddings_base_url`` as their caller (a caller token, as a run's LLM calls are).
    """

    max_items_per_owner: int = Field(10_000, gt=0, le=1_000_000, description="Live items of one principal.")
    max_namespace_depth: int = Field(8, gt=0, le=32, description="Labels in a namespace.")
    max_label_chars: int = Field(64, gt=0, le=256, description="Characters in one namespace label.")
    max_key_chars: int = Field(256, gt=0, le=1024)
    default_ttl_minutes: float | None = Field(
        None, gt=0, le=5_256_000, description="TTL of an item put without one; None: none."
    )
    max_ttl_minutes: float = Field(525_600, gt=0, le=5_256_000, description="Longest TTL a caller may set.")
    refresh_on_read: bool = Field(True, description="Reads renew TTLs unless the caller says.")
    embeddings_model: str | None = Field(
        "all-minilm-l6-v2", max_length=128, description="Served embeddings model; None: no semantic search."
    )
    embeddings_base_url: str = Field("http://127.0.0.1:8000/v1", description="The gateway's /v1.")
    api_key_env: str | None = Field(
        "WELIP_AGENTS_API_KEY", description="Environment variable holding the agents' service key."
    )
    embeddings_timeout_s: float = Field(30, gt=0, le=600)
    index_fields: list[str] = Field(
        default_factory=lambda: ["$"],
        min_length=1,
        max_length=16,
        description="Fields embedded when a put gives no `index` (`$`: the whole value as JSON).",
    )
    max_index_chars: int = Field(4000, gt=0, le=100_000, description="Text embedded per item, cut past this.")


class AgentsConfig(StrictModel):
    """The agents runtime: its assistants, replicas, retention and run bounds.

    ``deployments/agents.py`` adds the trust layer's config (``trust``) to it.
    """

    agents: list[AgentConfig | str] = Field(
        min_length=1, description="Agent configs, inline or as paths to YAML files (read by build_app)."
    )
    num_replicas: int = Field(1, gt=0, le=64)
    num_cpus: float = Field(0.1, gt=0, le=64)
    max_ongoing_requests: int = Field(64, gt=0, le=10_000)
    thread_ttl_s: float = Field(
        7 * 24 * 3600, gt=0, description="Threads idle this long are deleted with their checkpoints."
    )
    cleanup_interval_s: float = Field(300, gt=0, le=86_400)
    run_timeout_s: float = Field(600, gt=0, le=86_400, description="A run still going after this: timeout.")
    max_pending_runs_per_thread: int = Field(16, gt=0, le=1000, description="Queue bound for `enqueue`.")
    graph_paths: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Local folders your graphs are imported from (appended to sys.path), relative "
        "to the working directory: shipped in the image or a mounted volume, never a URL.",
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict,
        description="Environment of the replicas (database, storage, the service key's variable).",
    )
    stale_run_s: float = Field(
        30, gt=1, le=3600, description="A run whose replica stopped heartbeating this long is failed."
    )
    caller_json: CallerJsonLimits = Field(
        default_factory=CallerJsonLimits,
        description="Bounds on metadata, run config and commands a caller sends.",
    )
    store: StoreConfig = Field(default_factory=StoreConfig, description="The `/store` API (items per owner).")

    @field_validator("graph_paths")
    @classmethod
    def _local_paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not path or "://" in path or path.startswith(("git@", "http:", "https:")):
                raise ValueError(f"graph_paths are local folders, not {path!r}")
        return paths

    @model_validator(mode="after")
    def _unique_ids(self) -> AgentsConfig:
        ids = [a.assistant_id for a in self.agents if isinstance(a, AgentConfig)]
        if len(ids) != len(set(ids)):
            raise ValueError(f"assistant ids must be unique: {ids}")
        return self


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read and validate one agent YAML (``welip.config.load_config``, no overrides)."""
    return load_config(AgentConfig, path)


def resolve_agents(config: AgentsConfig, root: Path | None = None) -> list[AgentConfig]:
    """The app's agents, with paths read (relative to ``root``, default the working directory)."""
    agents = [
        a if isinstance(a, AgentConfig) else load_agent_config((root or Path.cwd()) / a)
        for a in config.agents
    ]
    ids = [a.assistant_id for a in agents]
    if len(ids) != len(set(ids)):
        raise ValueError(f"assistant ids must be unique: {ids}")
    return agents


def resolve_graph_paths(config: AgentsConfig, root: Path | None = None) -> list[str]:
    """The app's ``graph_paths`` as absolute folders (relative to ``root``, default the working directory).

    Raises:
        ValueError: a path is not a folder here.
    """
    folders = []
    for path in config.graph_paths:
        folder = ((root or Path.cwd()) / path).resolve()
        if not folder.is_dir():
            raise ValueError(f"graph_paths: {path!r} is not a folder ({folder})")
        folders.append(str(folder))
    return folders
