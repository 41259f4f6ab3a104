"""Documents into chunks: listing, reading markdown/text/PDF, structure-aware chunking, stable hashes."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import boto3
import pytest

from welip.config import load_config
from welip.rag import (
    DocumentFile,
    IngestConfig,
    chunk_document,
    content_hash,
    document_text,
    list_documents,
    read_chunks,
    resolve_documents,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
DOCS = REPO_ROOT / "data" / "docs"
INCLUDE = ["*.md", "*.txt", "*.pdf"]

GUIDE = """# Serving

WeLIP serves models with vLLM.

## Rate limits

Limits are token buckets in Redis.

```bash
# not a heading: a comment in a code block

make run
```

## Guardrails

Card numbers are Luhn-checked.
"""


def chunks_of(text: str, source: str = "guide.md", size: int = 1000, overlap: int = 100) -> list:
    return chunk_document(source, text, chunk_size_chars=size, chunk_overlap_chars=overlap, doc_hash="d")


def test_markdown_is_cut_at_headings_and_each_chunk_carries_its_heading() -> None:
    chunks = chunks_of(GUIDE)
    assert [c.title for c in chunks] == ["Serving", "Rate limits", "Guardrails"]
    assert chunks[1].text.startswith("## Rate limits\n\nLimits are token buckets in Redis.")
    # A '#' line inside a code fence is code, not a heading: it stays in its section.
    assert "# not a heading" in chunks[1].text
    assert "\n\nmake run\n```" in chunks[1].text  # the blank line inside the fence survives
    assert all(c.source == "guide.md" and c.doc_hash == "d" for c in chunks)


def test_long_sections_are_packed_by_paragraph_within_the_size_with_overlap() -> None:
    paragraphs = [f"Paragraph {i} says something about topic {i}. " * 4 for i in range(30)]
    text = "# Long\n\n" + "\n\n".join(p.strip() for p in paragraphs)
    chunks = chunks_of(text, size=600, overlap=120)
    assert len(chunks) > 5
    assert all(len(c.text) <= 600 for c in chunks)
    assert all(c.text.startswith("# Long\n\n") and c.title == "Long" for c in chunks)
    # Every paragraph is in some chunk, whole.
    body = "\n".join(c.text for c in chunks)
    assert all(p.strip() in body for p in paragraphs)
    # Consecutive chunks share text: the start of one repeats the end of the previous one.
    for previous, chunk in itertools.pairwise(chunks):
        first_words = chunk.text.removeprefix("# Long\n\n").split("\n\n")[0][:30]
        assert first_words in previous.text


def test_a_paragraph_longer_than_a_chunk_is_cut_at_sentences_then_words() -> None:
    long_paragraph = "".join(f"Sentence {i} is about WeLIP and its gateway. " for i in range(60))
    one_word = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(40))  # 2560 chars
    chunks = chunks_of(f"# A\n\n{long_paragraph}\n\n{one_word}", size=500, overlap=0)
    assert all(len(c.text) <= 500 for c in chunks)
    joined = "".join(c.text.removeprefix("# A\n\n") for c in chunks)
    assert joined.count("WeLIP") == 60
    assert one_word in joined
    assert all(c.text.endswith(".") for c in chunks if "WeLIP" in c.text)  # sentences stay whole


def test_text_files_are_one_section_titled_by_their_first_line() -> None:
    chunks = chunks_of("WeLIP FAQ\n\nQ: What is it?\nA: A platform.\n", source="faq.txt")
    assert [c.title for c in chunks] == ["WeLIP FAQ"]
    assert chunks[0].text.startswith("WeLIP FAQ")


def test_hashes_are_stable_and_identify_source_and_text() -> None:
    text = "# Title\n\nHello."
    (chunk,) = chunks_of(text)
    # A literal: a change of the hashing scheme would make every table re-embed everything.
    assert chunk.content_hash == "df20df6b2b6d7fe95d5c483f4877826b1150b8382f57e242c9dcd2f0adad4e9d"
    assert chunk.content_hash == content_hash("guide.md", text)
    assert chunk.chunk_id == chunk.content_hash[:16]
    assert chunks_of(text) == [chunk]
    assert content_hash("other.md", text) != chunk.content_hash  # same text, other document
    (changed,) = chunks_of(text + " World.")
    assert changed.content_hash != chunk.content_hash


def test_identical_chunks_of_one_document_appear_once() -> None:
    chunks = chunks_of("# A\n\nSame.\n\n# A\n\nSame.\n\n# B\n\nSame.\n")
    assert [c.text for c in chunks] == ["# A\n\nSame.", "# B\n\nSame."]


def test_listing_matches_globs_skips_hidden_files_and_sorts(tmp_path: Path) -> None:
    for name in ["b.md", "a.txt", "guides/deep/c.md", "notes.rst", ".hidden.md", ".git/x.md", "guides/d.pdf"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    found = list_documents(str(tmp_path), INCLUDE)
    assert [d.source for d in found] == ["a.txt", "b.md", "guides/d.pdf", "guides/deep/c.md"]
    assert found[0].url == str(tmp_path / "a.txt")
    assert [d.source for d in list_documents(str(tmp_path), ["guides/*.md"])] == []
    assert [d.source for d in list_documents(str(tmp_path), ["deep/*.md"])] == ["guides/deep/c.md"]


def test_relative_documents_resolve_against_the_working_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    assert resolve_documents("data/docs") == str(DOCS)
    assert resolve_documents("s3://bucket/docs/") == "s3://bucket/docs"


def test_a_missing_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        list_documents(str(tmp_path / "nope"), INCLUDE)


def test_documents_are_listed_and_read_from_s3(s3_endpoint: str) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="docs-bucket")
    s3.put_object(Bucket="docs-bucket", Key="welip/guide.md", Body=GUIDE.encode())
    s3.put_object(Bucket="docs-bucket", Key="welip/sub/faq.txt", Body=b"FAQ\n\nQ: A?\n")
    s3.put_object(Bucket="docs-bucket", Key="welip/image.png", Body=b"\x89PNG")
    found = list_documents("s3://docs-bucket/welip/", INCLUDE)
    assert found == [
        DocumentFile(url="s3://docs-bucket/welip/guide.md", source="guide.md"),
        DocumentFile(url="s3://docs-bucket/welip/sub/faq.txt", source="sub/faq.txt"),
    ]
    rows = read_chunks(found[0], chunk_size_chars=1000, chunk_overlap_chars=100)
    assert [r["title"] for r in rows] == ["Serving", "Rate limits", "Guardrails"]
    assert rows[0]["doc_hash"] == hashlib.sha256(GUIDE.encode()).hexdigest()
    assert all(r["error"] == "" for r in rows)


def test_pdf_text_is_extracted() -> None:
    text = document_text("architecture.pdf", (DOCS / "architecture.pdf").read_bytes())
    assert text.startswith("WeLIP architecture on one page")
    assert "LanceDB" in text


def test_an_unreadable_document_becomes_one_error_row_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    rows = read_chunks(
        DocumentFile(url=str(tmp_path / "broken.pdf"), source="broken.pdf"),
        chunk_size_chars=1000,
        chunk_overlap_chars=0,
    )
    assert len(rows) == 1
    assert rows[0]["source"] == "broken.pdf" and rows[0]["text"] == ""
    assert rows[0]["error"]


def test_shipped_docs_describe_welip_in_markdown_text_and_pdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    cfg = load_config(IngestConfig, REPO_ROOT / "configs" / "rag" / "welip_docs.yaml")
    found = list_documents(cfg.documents, cfg.include)
    suffixes = [Path(d.source).suffix for d in found]
    assert 10 <= suffixes.count(".md") <= 20
    assert ".txt" in suffixes and ".pdf" in suffixes
    assert (DOCS / "architecture.pdf").stat().st_size < 20_000
    rows = [
        row
        for d in found
        for row in read_chunks(
            d, chunk_size_chars=cfg.chunk_size_chars, chunk_overlap_chars=cfg.chunk_overlap_chars
        )
    ]
    assert all(r["error"] == "" and r["text"] for r in rows)
    assert {r["source"] for r in rows} == {d.source for d in found}
    assert all(len(r["text"]) <= cfg.chunk_size_chars for r in rows)
