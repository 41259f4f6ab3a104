"""A fake embedder for unit tests (a bag of keywords, so similarity is predictable) and small documents."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import pyarrow as pa

from welip.rag import chunk_document, embed_chunks

KEYWORDS = ["redis", "limit", "lora", "adapter", "kuberay", "manifest", "guardrail", "card"]
DIMENSIONS = len(KEYWORDS)


@dataclass
class FakeResult:
    vectors: list[list[float]]


class FakeEmbedder:
    """Counts keyword stems; a text with none gets a small constant vector."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str]) -> FakeResult:
        self.calls.append(list(texts))
        return FakeResult([vector(t) for t in texts])


def vector(text: str) -> list[float]:
    words = re.findall(r"[a-z]+", text.lower())
    counts = [float(sum(w.startswith(k) for w in words)) for k in KEYWORDS]
    if not any(counts):
        counts = [0.1] * DIMENSIONS
    norm = math.sqrt(sum(c * c for c in counts))
    return [c / norm for c in counts]


MODEL = "fake-keywords"
DOCS = {
    "limits.md": "# Rate limits\n\nEach key has a requests-per-minute limit kept in Redis.",
    "lora.md": "# Adapters\n\nLoRA adapters are hot-loaded into the running engine.",
    "kuberay.md": "# KubeRay\n\nEvery RayJob manifest is validated against the KubeRay CRDs.",
    "guardrails.md": "# Guardrails\n\nCard numbers are Luhn-checked and redacted by the guardrail.",
}


def rows(docs: dict[str, str], embedder: FakeEmbedder | None = None) -> pa.Table:
    chunks = [
        c
        for source, text in docs.items()
        for c in chunk_document(source, text, chunk_size_chars=500, chunk_overlap_chars=50, doc_hash="h")
    ]
    table = pa.Table.from_pylist([asdict(c) for c in chunks])
    return embed_chunks(embedder or FakeEmbedder(), table, MODEL)
