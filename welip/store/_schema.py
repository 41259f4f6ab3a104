"""Tables of WeLIP's metadata database (SQLAlchemy Core), one source for every dialect.

Roles are not a table: they are part of the gateway config, versioned with the
deployment (as Kubernetes RBAC lives in manifests); a key's grants (role, model
allow list, limits) are columns of ``api_keys``.

Alembic migrations under ``migrations/`` create and evolve them; a unit test keeps
the migrated schema equal to this metadata.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True, comment="Public key id (shown in lists, audit)."),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True, comment="sha256 of the key."),
    sa.Column("key_prefix", sa.String(16), nullable=False, comment="First characters, to recognise it."),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("models", sa.JSON, nullable=True, comment="Allow list narrowing the role's; null: role's."),
    sa.Column("rpm", sa.Integer, nullable=True),
    sa.Column("tpm", sa.BigInteger, nullable=True),
    sa.Column("token_budget", sa.BigInteger, nullable=True, comment="Tokens for the key's lifetime."),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column(
        "id", sa.String(32), primary_key=True, comment="Minted by the gateway: replays are idempotent."
    ),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("principal", sa.String(256), nullable=True, index=True),
    sa.Column("principal_kind", sa.String(16), nullable=False, comment="api_key | oidc | anonymous"),
    sa.Column("key_id", sa.String(32), nullable=True, index=True),
    sa.Column("role", sa.String(64), nullable=True),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column(
        "via",
        sa.String(256),
        nullable=True,
        comment="The service (principal id) that called on the principal's behalf (a caller token).",
    ),
    sa.Column("route", sa.String(256), nullable=False),
    sa.Column("model", sa.String(128), nullable=True, index=True),
    sa.Column("status", sa.Integer, nullable=False, index=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("prompt_tokens", sa.Integer, nullable=True),
    sa.Column("completion_tokens", sa.Integer, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("cache", sa.String(8), nullable=True, comment="hit | miss | null when not cacheable"),
    sa.Column("guardrails", sa.JSON, nullable=True, comment="Verdicts: [{direction, kind, action}]"),
    sa.Column("replica", sa.String(128), nullable=True, comment="Gateway replica that answered."),
    sa.Column("body", sa.Text, nullable=True, comment="Raw request, only when audit.record_prompts."),
)

usage_daily = sa.Table(
    "usage_daily",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("principal", sa.String(256), primary_key=True),
    sa.Column("model", sa.String(128), primary_key=True, comment="Empty when the request named none."),
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False, comment="Requests answered with status >= 400."),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    comment="Per principal, model and UTC day; added to in the transaction that inserts audit rows.",
)

eval_runs = sa.Table(
    "eval_runs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True, comment="Eval run id (also the results folder)."),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("task", sa.String(64), nullable=False, index=True),
    sa.Column("model", sa.String(256), nullable=False, index=True),
    sa.Column("target_kind", sa.String(16), nullable=False, comment="endpoint | batch"),
    sa.Column("status", sa.String(16), nullable=False, comment="finished | failed"),
    sa.Column("dataset_sha256", sa.String(64), nullable=True),
    sa.Column("template_sha256", sa.String(64), nullable=True),
    sa.Column("engine_version", sa.String(64), nullable=True),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False, comment="Rows in the dataset file."),
    sa.Column("scored", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False, comment="Samples whose request failed for good."),
    sa.Column("malformed", sa.Integer, nullable=False, comment="Rows that could not be rendered."),
    sa.Column("metrics", sa.JSON, nullable=False, comment="Metric name -> mean."),
    sa.Column("results_url", sa.Text, nullable=False, comment="Folder with samples.jsonl, summary.json."),
    sa.Column("mlflow_run_id", sa.String(64), nullable=True),
    sa.Column("error", sa.Text, nullable=True, comment="Why a failed run failed."),
    comment="One row per evaluation job run; per-sample results live in storage and MLflow.",
)

adapters = sa.Table(
    "adapters",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True, comment="Model id clients send: <name>-v<version>."),
    sa.Column("name", sa.String(64), nullable=False, index=True, comment="Registered model name."),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("base_model_id", sa.String(128), nullable=False, comment="Serving id of the base model."),
    sa.Column("uri", sa.Text, nullable=False, comment="Adapter folder: local path or s3:// URL."),
    sa.Column("kind", sa.String(16), nullable=False, comment="sft | grpo"),
    sa.Column("mlflow_run_id", sa.String(64), nullable=True),
    sa.Column("lineage", sa.JSON, nullable=False, comment="Base model, dataset and config hashes, commit."),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("name", "version", name="uq_adapters_name_version"),
    comment="LoRA adapters the gateway may hot-load into their base model's engine.",
)

model_aliases = sa.Table(
    "model_aliases",
    metadata,
    sa.Column("alias", sa.String(128), primary_key=True, comment="Model id clients send."),
    sa.Column("target", sa.String(128), nullable=False, comment="A served model id or an adapter id."),
    sa.Column("previous", sa.String(128), nullable=True, comment="Target before the last switch."),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_by", sa.String(256), nullable=True),
    sa.Column("decision", sa.JSON, nullable=True, comment="The gate that allowed the switch, if any."),
    comment="Names the gateway routes to another model; `welip promote` switches them.",
)

agent_threads = sa.Table(
    "agent_threads",
    metadata,
    sa.Column(
        "thread_key",
        sa.String(128),
        primary_key=True,
        comment="Internal id, the checkpointer's thread_id: derived from owner and thread_id.",
    ),
    sa.Column("thread_id", sa.String(64), nullable=False, comment="The owner's id for it."),
    sa.Column("owner", sa.String(256), nullable=False, comment="Principal that created it."),
    sa.Column("assistant_id", sa.String(64), nullable=True, comment="Graph of its first run."),
    sa.Column("status", sa.String(16), nullable=False, comment="idle | busy | interrupted | error"),
    sa.Column("thread_metadata", sa.JSON, nullable=False),
    sa.Column("active_run_id", sa.String(64), nullable=True, comment="The run holding the thread."),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.UniqueConstraint("owner", "thread_id", name="uq_agent_threads_owner_thread_id"),
    comment="Agent threads (Agent Protocol); their state lives in LangGraph's checkpoint tables.",
)

agent_runs = sa.Table(
    "agent_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("thread_id", sa.String(64), nullable=False, index=True),
    sa.Column("thread_key", sa.String(128), nullable=False, index=True, comment="Its thread's thread_key."),
    sa.Column("assistant_id", sa.String(64), nullable=False),
    sa.Column("owner", sa.String(256), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, comment="pending | running | success | error | ..."),
    sa.Column("multitask_strategy", sa.String(16), nullable=False),
    sa.Column("kwargs", sa.JSON, nullable=False, comment="input or command, stream modes, config."),
    sa.Column("run_metadata", sa.JSON, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("replica", sa.String(128), nullable=True, comment="Replica executing it."),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    comment="Agent runs: queued, executing or finished, on whichever replica took them.",
)

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True, comment="OpenAI-style id: file-<hex>."),
    sa.Column("owner", sa.String(256), nullable=False, index=True, comment="Principal that uploaded it."),
    sa.Column("purpose", sa.String(16), nullable=False, comment="batch | fine-tune | evals"),
    sa.Column("filename", sa.String(255), nullable=False, comment="Name the client gave it."),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, comment="Digest of the content."),
    sa.Column("content_url", sa.Text, nullable=False, comment="Where the content lives: path or s3:// URL."),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True, index=True),
    comment="Files uploaded through /v1/files; their content lives in the artifact storage.",
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True, comment="OpenAI-style id: batch_<hex>."),
    sa.Column("owner", sa.String(256), nullable=False, index=True, comment="Principal that created it."),
    sa.Column("endpoint", sa.String(64), nullable=False, comment="/v1/chat/completions | /v1/embeddings"),
    sa.Column("input_file_id", sa.String(64), nullable=False),
    sa.Column("completion_window", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, comment="validating | in_progress | ... | cancelled"),
    sa.Column("output_file_id", sa.String(64), nullable=True),
    sa.Column("error_file_id", sa.String(64), nullable=True),
    sa.Column("request_total", sa.Integer, nullable=False),
    sa.Column("request_completed", sa.Integer, nullable=False),
    sa.Column("request_failed", sa.Integer, nullable=False),
    sa.Column("batch_metadata", sa.JSON, nullable=True, comment="The caller's metadata (16 pairs at most)."),
    sa.Column("errors", sa.JSON, nullable=True, comment="Why it failed: OpenAI's errors.data."),
    sa.Column("job_id", sa.String(128), nullable=True, comment="The Ray Job running it."),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("in_progress_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finalizing_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("cancelling_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
    comment="Batches (/v1/batches): one Ray Job each runs an input file's requests through the gateway.",
)

agent_store_items = sa.Table(
    "agent_store_items",
    metadata,
    sa.Column("owner", sa.String(256), primary_key=True, comment="Principal that put it."),
    sa.Column("namespace", sa.Text, primary_key=True, comment="Its labels joined with `.`."),
    sa.Column("key", sa.String(1024), primary_key=True),
    sa.Column(
        "value", sa.JSON, nullable=False, comment="The JSON object, or its AES-256-GCM ciphertext (a string)."
    ),
    sa.Column(
        "embedding",
        sa.LargeBinary,
        nullable=True,
        comment="Unit vector of its indexed text as little-endian float32s, if indexed.",
    ),
    sa.Column("ttl_minutes", sa.Float, nullable=True, comment="Life after a write (or a refreshing read)."),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    comment="LangGraph's store (/store API): items under namespaces, per owner.",
)
