"""Suite datasets: jsonl, csv or parquet, local or ``s3://``; bad rows reported, not fatal."""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any

from welip.store import read_bytes


@dataclass(frozen=True)
class Document:
    """One dataset row: its position, its id and its fields."""

    row: int
    id: str
    doc: dict[str, Any]


@dataclass(frozen=True)
class Malformed:
    """A row that could not be evaluated, and why (it is counted and reported)."""

    row: int
    id: str | None
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "id": self.id, "error": self.error}


@dataclass(frozen=True)
class Dataset:
    """The rows of a suite's file, the rows it could not read, and the file's hash."""

    documents: list[Document]
    malformed: list[Malformed]
    sha256: str


def dataset_format(path: str, declared: str | None = None) -> str:
    """The file format: ``declared``, or from the suffix (``.jsonl``, ``.csv``, ``.parquet``)."""
    if declared:
        return declared
    for suffix, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".csv", "csv"), (".parquet", "parquet")):
        if path.lower().endswith(suffix):
            return fmt
    raise ValueError(f"{path}: cannot tell the format from the suffix; set dataset_format")


def _records(data: bytes, fmt: str) -> list[tuple[int, dict[str, Any]] | Malformed]:
    """Rows numbered from 0: the line for jsonl (blank lines count), the record otherwise."""
    out: list[tuple[int, dict[str, Any]] | Malformed] = []
    if fmt == "jsonl":
        for row, line in enumerate(data.decode("utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                out.append(Malformed(row, None, f"invalid JSON: {exc.msg} at column {exc.colno}"))
                continue
            if not isinstance(value, dict):
                out.append(Malformed(row, None, f"a row must be a JSON object, got {type(value).__name__}"))
                continue
            out.append((row, value))
        return out
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(data)) if fmt == "csv" else pd.read_parquet(io.BytesIO(data))
    for row, record in enumerate(frame.to_dict(orient="records")):
        # CSV gaps arrive as NaN: make them missing, so templates report them by name.
        fields = {str(k): v for k, v in record.items() if not (isinstance(v, float) and math.isnan(v))}
        out.append((row, fields))
    return out


def load_dataset(path: str, fmt: str | None = None, *, id_field: str | None = "id") -> Dataset:
    """Read a suite's dataset.

    Rows that do not parse, or repeat an id, become :class:`Malformed` entries; the
    rest become :class:`Document` objects in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the format is unknown.
    """
    data = read_bytes(path)
    documents: list[Document] = []
    malformed: list[Malformed] = []
    seen: set[str] = set()
    for item in _records(data, dataset_format(path, fmt)):
        if isinstance(item, Malformed):
            malformed.append(item)
            continue
        row, record = item
        raw_id = record.get(id_field) if id_field else None
        doc_id = str(raw_id) if raw_id is not None else str(row)
        if doc_id in seen:
            malformed.append(Malformed(row, doc_id, f"duplicate id {doc_id!r}"))
            continue
        seen.add(doc_id)
        documents.append(Document(row, doc_id, record))
    return Dataset(documents, malformed, hashlib.sha256(data).hexdigest())
