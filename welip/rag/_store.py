"""A LanceDB table of embedded chunks: add, count, delete, full-text index, vector/FTS/hybrid search.

One table per document set under a LanceDB database root (a local folder, or ``s3://``
with ``WELIP_S3_ENDPOINT_URL`` for MinIO). The schema is fixed (:func:`table_schema`);
the embedding model that made the vectors is recorded in the schema's metadata and on
every row, so whoever queries the table can embed with the same model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import pyarrow as pa

from welip.store import join_url, storage_url_from_env

logger = logging.getLogger(__name__)

SearchMode = Literal["hybrid", "vector", "fts"]
SEARCH_MODES: tuple[SearchMode, ...] = ("hybrid", "vector", "fts")
MODEL_METADATA_KEY = b"welip.embedding_model"
TEXT_COLUMNS = ("chunk_id", "source", "title", "text", "content_hash", "doc_hash")
_DELETE_BATCH = 500
# A store opened by a long-running reader (the RAG agent) sees a re-ingested table this soon.
_READ_CONSISTENCY = timedelta(seconds=5)


class TableNotFound(LookupError):
    """The table has not been made yet (run ``jobs/ingest.py``)."""


@dataclass(frozen=True)
class RetrievedChunk:
    """One search result."""

    chunk_id: str
    source: str
    """The document's path relative to the documents root."""
    title: str
    """The nearest heading above the chunk."""
    text: str
    score: float
    """Higher is better. vector: cosine similarity; fts: BM25; hybrid: reciprocal rank fusion."""


def table_schema(dimensions: int, embedding_model: str) -> pa.Schema:
    """The table's schema: text columns, ``vector`` (fixed-size float32), ``embedding_model``."""
    return pa.schema(
        [
            *(pa.field(name, pa.string(), nullable=False) for name in TEXT_COLUMNS),
            pa.field("vector", pa.list_(pa.float32(), dimensions), nullable=False),
            pa.field("embedding_model", pa.string(), nullable=False),
        ],
        metadata={MODEL_METADATA_KEY: embedding_model.encode()},
    )


def storage_options(url: str) -> dict[str, str] | None:
    """LanceDB ``storage_options`` for ``url``: the S3 endpoint of ``WELIP_S3_ENDPOINT_URL``.

    Credentials and region come from the usual AWS variables, which LanceDB reads itself;
    a plain-HTTP endpoint (a local MinIO or moto) needs ``allow_http``.
    """
    if not url.startswith("s3://"):
        return None
    options: dict[str, str] = {}
    endpoint = os.environ.get("WELIP_S3_ENDPOINT_URL")
    if endpoint:
        options["endpoint"] = endpoint
        if endpoint.startswith("http://"):
            options["allow_http"] = "true"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return options or None


class VectorStore:
    """One LanceDB table of chunks. Open with :meth:`open`; the table is made by the first :meth:`add`."""

    def __init__(self, db: Any, table: str, url: str) -> None:
        self._db = db
        self._name = table
        self._url = url
        self._table: Any = None

    @classmethod
    def open(cls, table: str, storage_url: str | None = None) -> VectorStore:
        """The table ``table`` in the LanceDB database at ``storage_url``.

        Args:
            table: the table's name (``welip_docs``).
            storage_url: the database root, a local folder or ``s3://bucket/prefix``
                (default ``$WELIP_STORAGE_URL/rag``).
        """
        import lancedb

        url = storage_url or join_url(storage_url_from_env(), "rag")
        uri = url if url.startswith("s3://") else os.path.expanduser(url)
        db = lancedb.connect(
            uri, storage_options=storage_options(url), read_consistency_interval=_READ_CONSISTENCY
        )
        return cls(db, table, url)

    @property
    def name(self) -> str:
        """The table's name."""
        return self._name

    @property
    def url(self) -> str:
        """The database root the table lives in."""
        return self._url

    def _open(self) -> Any | None:
        if self._table is None:
            try:
                self._table = self._db.open_table(self._name)
            except ValueError:  # LanceDB's "Table '...' was not found"
                return None
        return self._table

    def _require(self) -> Any:
        table = self._open()
        if table is None:
            raise TableNotFound(
                f"no table {self._name!r} in {self._url}: build it with "
                f"jobs/ingest.py (table={self._name} storage_url={self._url})"
            )
        return table

    def exists(self) -> bool:
        """Whether the table has been made."""
        return self._open() is not None

    @property
    def embedding_model(self) -> str | None:
        """The id of the model that made the vectors, or None before the table exists."""
        table = self._open()
        if table is None:
            return None
        metadata = table.schema.metadata or {}
        return metadata.get(MODEL_METADATA_KEY, b"").decode() or None

    @property
    def dimensions(self) -> int | None:
        """The length of the vectors, or None before the table exists."""
        table = self._open()
        return None if table is None else int(table.schema.field("vector").type.list_size)

    def count(self) -> int:
        """Rows (chunks) in the table; 0 before it exists."""
        table = self._open()
        return 0 if table is None else int(table.count_rows())

    def content_hashes(self) -> set[str]:
        """The ``content_hash`` of every row: what ingestion must not add again."""
        return set(self.rows(["content_hash"])["content_hash"])

    def rows(self, columns: Sequence[str]) -> dict[str, list[Any]]:
        """Every row's values of ``columns`` (no vectors unless asked), column by column."""
        table = self._open()
        if table is None:
            return {name: [] for name in columns}
        data = table.search().select(list(columns)).limit(None).to_arrow()
        return {name: data.column(name).to_pylist() for name in columns}

    def add(self, rows: pa.Table | Sequence[dict[str, Any]], *, reindex: bool = True) -> int:
        """Append rows (the columns of :func:`table_schema`); the first add makes the table.

        Args:
            rows: a pyarrow table or dicts with ``chunk_id``, ``source``, ``title``, ``text``,
                ``content_hash``, ``doc_hash``, ``vector`` and ``embedding_model``.
            reindex: rebuild the full-text index afterwards. Pass False when adding in many
                batches and call :meth:`reindex` once at the end.

        Returns:
            The rows added.

        Raises:
            ValueError: the rows' model or vector length differs from the table's.
        """
        data = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
        if data.num_rows == 0:
            return 0
        models = set(data.column("embedding_model").to_pylist())
        if len(models) != 1:
            raise ValueError(f"rows come from several embedding models: {sorted(models)}")
        (model,) = models
        vector_type = data.schema.field("vector").type
        dimensions = (
            vector_type.list_size
            if pa.types.is_fixed_size_list(vector_type)
            else len(data.column("vector")[0].as_py())
        )
        table = self._open()
        if table is not None:
            if self.embedding_model != model:
                raise ValueError(
                    f"table {self._name!r} holds vectors of {self.embedding_model!r}; "
                    f"these rows come from {model!r} (use another table, or rebuild this one)"
                )
            if self.dimensions != dimensions:
                raise ValueError(
                    f"table {self._name!r} holds {self.dimensions}-dimensional vectors; "
                    f"these have {dimensions}"
                )
        schema = table_schema(dimensions, model)
        data = data.select(schema.names).cast(schema)
        if table is None:
            self._table = self._db.create_table(self._name, data=data, schema=schema)
        else:
            table.add(data)
        if reindex:
            self.reindex()
        return int(data.num_rows)

    def delete(self, content_hashes: Iterable[str]) -> int:
        """Delete the rows with these content hashes; returns how many went."""
        table = self._open()
        hashes = sorted(set(content_hashes))
        if table is None or not hashes:
            return 0
        before = int(table.count_rows())
        for start in range(0, len(hashes), _DELETE_BATCH):
            # Hashes are hex digests, so they need no quoting beyond the quotes.
            quoted = ", ".join(f"'{h}'" for h in hashes[start : start + _DELETE_BATCH] if h.isalnum())
            if quoted:
                table.delete(f"content_hash IN ({quoted})")
        return before - int(table.count_rows())

    def reindex(self, *, if_missing: bool = False) -> bool:
        """(Re)build the full-text index on ``text`` (LanceDB's native FTS, English stemming).

        Args:
            if_missing: only build it when the table has none (a run that stopped between
                its adds and its index build).

        Returns:
            Whether an index was built.
        """
        from lancedb.index import FTS

        table = self._require()
        if if_missing and any(
            index.index_type == "FTS" and list(index.columns) == ["text"] for index in table.list_indices()
        ):
            return False
        table.create_index("text", config=FTS(), replace=True)
        return True

    def search(
        self,
        query_text: str,
        query_vector: Sequence[float] | None = None,
        k: int = 4,
        mode: SearchMode = "hybrid",
    ) -> list[RetrievedChunk]:
        """The ``k`` best chunks for a query.

        Args:
            query_text: the question; the full-text half of the search (``fts``, ``hybrid``).
            query_vector: the question embedded with :attr:`embedding_model` (``vector``,
                ``hybrid``; ``fts`` needs none).
            k: how many chunks.
            mode: ``vector`` (cosine similarity), ``fts`` (BM25 over ``text``), or ``hybrid``:
                both, fused by LanceDB's reciprocal-rank-fusion reranker.

        Raises:
            TableNotFound: the table has not been made; ValueError: a missing or
            wrongly-sized vector, an unknown mode.
        """
        if mode not in SEARCH_MODES:
            raise ValueError(f"unknown search mode {mode!r}; one of {', '.join(SEARCH_MODES)}")
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        table = self._require()
        vector: list[float] | None = None
        if mode != "fts":
            if query_vector is None:
                raise ValueError(f"{mode} search needs a query vector")
            vector = [float(x) for x in query_vector]
            if len(vector) != self.dimensions:
                raise ValueError(
                    f"query vector has {len(vector)} dimensions; table {self._name!r} holds "
                    f"{self.dimensions} ({self.embedding_model})"
                )
        if mode == "hybrid" and not query_text.strip():
            mode = "vector"
        columns = ["chunk_id", "source", "title", "text"]
        if mode == "vector":
            rows = (
                table.search(vector, vector_column_name="vector", query_type="vector")
                .distance_type("cosine")
                .select([*columns, "_distance"])
                .limit(k)
                .to_list()
            )
            return [_result(row, 1.0 - float(row["_distance"])) for row in rows]
        if mode == "fts":
            rows = (
                table.search(query_text, query_type="fts", fts_columns="text")
                .select([*columns, "_score"])
                .limit(k)
                .to_list()
            )
            return [_result(row, float(row["_score"])) for row in rows]
        from lancedb.rerankers import RRFReranker

        rows = (
            table.search(query_type="hybrid", vector_column_name="vector", fts_columns="text")
            .vector(vector)
            .text(query_text)
            .distance_type("cosine")
            .rerank(RRFReranker())
            .limit(k)
            .to_list()
        )
        return [_result(row, float(row["_relevance_score"])) for row in rows]


def _result(row: dict[str, Any], score: float) -> RetrievedChunk:
    return RetrievedChunk(
        chunk_id=row["chunk_id"], source=row["source"], title=row["title"], text=row["text"], score=score
    )
