"""Documents into chunks: listing (local or ``s3://``), reading (markdown, text, PDF), chunking.

Chunks follow the document's structure: markdown is cut at its headings (outside code
fences), each section at blank lines into paragraphs, and paragraphs are packed into
chunks of at most ``chunk_size_chars``; a paragraph longer than that is cut at sentence,
then word boundaries. Every chunk starts with its section's heading line, so a chunk
read alone (by the model, or by full-text search) still says what it is about.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from welip.store import filesystem, read_bytes

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MARKDOWN_SUFFIXES = {".md", ".markdown"}
_TITLE_MAX_CHARS = 200


@dataclass(frozen=True)
class Chunk:
    """One piece of a document, as stored in the table (without its vector)."""

    chunk_id: str
    """Short stable id: the first 16 hex digits of :attr:`content_hash`."""
    source: str
    """Path of the document relative to the documents root (``guides/serving.md``)."""
    title: str
    """The nearest heading above the chunk, else the document's first line or file name."""
    text: str
    """The chunk's text, starting with its section's heading line."""
    content_hash: str
    """sha256 of source and text: the identity that makes ingestion idempotent."""
    doc_hash: str
    """sha256 of the whole document's bytes."""


@dataclass(frozen=True)
class DocumentFile:
    """One listed document: where every worker reads it, and the name its chunks carry."""

    url: str
    """Absolute local path or ``s3://`` URL."""
    source: str
    """Path relative to the documents root (``/``-separated): ``guides/serving.md``."""


def content_hash(source: str, text: str) -> str:
    """The sha256 (hex) identifying a chunk: its document's relative path and its text."""
    return hashlib.sha256(f"{source}\x00{text}".encode()).hexdigest()


def resolve_documents(documents: str) -> str:
    """``documents`` as the URL every worker reads: ``s3://`` as is, a local path made absolute.

    Relative paths are resolved against the current working directory: the repository
    for a local run, the job's unpacked ``working_dir`` under ``ray job submit``.
    """
    if documents.startswith("s3://"):
        return documents.rstrip("/")
    return str(Path(documents).expanduser().resolve())


def list_documents(documents: str, include: Sequence[str]) -> list[DocumentFile]:
    """Every file under ``documents`` matching one of ``include``, in the order of their ``source``.

    Hidden files and folders (``.git``, ``.DS_Store``) are skipped.

    Raises:
        FileNotFoundError: ``documents`` is not a folder.
    """
    root_url = resolve_documents(documents)
    fs, root = filesystem(root_url)
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise FileNotFoundError(f"documents {documents!r}: {root_url} is not a folder")
    found: list[DocumentFile] = []
    for path in fs.find(root):
        relative = str(path)[len(root) :].lstrip("/")
        parts = PurePosixPath(relative).parts
        if not parts or any(part.startswith(".") for part in parts):
            continue
        if any(PurePosixPath(relative).match(pattern) for pattern in include):
            url = f"s3://{path}" if root_url.startswith("s3://") else str(path)
            found.append(DocumentFile(url=url, source=relative))
    return sorted(found, key=lambda d: d.source)


def document_text(source: str, data: bytes) -> str:
    """The text of a document: PDF pages through pypdf, anything else as UTF-8."""
    if source.lower().endswith(".pdf"):
        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(data))
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n")


def chunk_document(
    source: str, text: str, *, chunk_size_chars: int, chunk_overlap_chars: int, doc_hash: str = ""
) -> list[Chunk]:
    """Cut one document into chunks (see the module docstring); identical chunks appear once.

    Args:
        source: the document's path relative to the documents root; markdown
            (``.md``, ``.markdown``) is cut at its headings, other text is one section.
        text: the document's text.
        chunk_size_chars: the longest chunk, heading included.
        chunk_overlap_chars: characters a chunk repeats from the end of the previous one
            of the same section (at a word boundary).
        doc_hash: the document's hash, recorded on every chunk.
    """
    default_title = _first_line(text) or PurePosixPath(source).stem
    markdown = PurePosixPath(source).suffix.lower() in _MARKDOWN_SUFFIXES
    chunks: list[Chunk] = []
    seen: set[str] = set()
    for title, heading, body in _sections(text, default_title, markdown):
        for piece in _pack(heading, _paragraphs(body), chunk_size_chars, chunk_overlap_chars):
            digest = content_hash(source, piece)
            if digest in seen:
                continue
            seen.add(digest)
            chunks.append(
                Chunk(
                    chunk_id=digest[:16],
                    source=source,
                    title=title,
                    text=piece,
                    content_hash=digest,
                    doc_hash=doc_hash,
                )
            )
    return chunks


def read_chunks(
    document: DocumentFile, *, chunk_size_chars: int, chunk_overlap_chars: int
) -> list[dict[str, Any]]:
    """Read and chunk one listed document: the rows of Ray Data's ``flat_map`` step of ingestion.

    Each row is a :class:`Chunk`'s fields and an ``error`` field: empty, or, for a
    document that cannot be read or parsed, the reason, on a single row with no text, so
    the job reports it instead of stopping or losing it silently.
    """
    source = document.source
    try:
        data = read_bytes(document.url)
        doc_hash = hashlib.sha256(data).hexdigest()
        text = document_text(source, data)
    except Exception as exc:  # noqa: BLE001 - one bad document must not stop the others
        empty = Chunk(chunk_id="", source=source, title="", text="", content_hash="", doc_hash="")
        return [{**asdict(empty), "error": f"{type(exc).__name__}: {exc}"}]
    chunks = chunk_document(
        source,
        text,
        chunk_size_chars=chunk_size_chars,
        chunk_overlap_chars=chunk_overlap_chars,
        doc_hash=doc_hash,
    )
    return [{**asdict(chunk), "error": ""} for chunk in chunks]


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:_TITLE_MAX_CHARS]
    return ""


def _sections(text: str, default_title: str, markdown: bool) -> list[tuple[str, str, str]]:
    """``(title, heading line, body)`` per section; the part before any heading has no heading line."""
    if not markdown:
        return [(default_title, "", text)]
    sections: list[tuple[str, str, str]] = []
    title, heading = default_title, ""
    lines: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            sections.append((title, heading, "\n".join(lines)))
            title, heading, lines = match.group(2).strip()[:_TITLE_MAX_CHARS], line.strip(), []
        else:
            lines.append(line)
    sections.append((title, heading, "\n".join(lines)))
    return [s for s in sections if s[2].strip()]


def _paragraphs(body: str) -> list[str]:
    """Blank-line separated blocks; a fenced code block stays one block, blank lines and all."""
    blocks: list[str] = []
    current: list[str] = []
    in_fence = False
    for line in body.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        if not line.strip() and not in_fence:
            if current:
                blocks.append("\n".join(current).strip())
                current = []
        else:
            current.append(line.rstrip())
    if current:
        blocks.append("\n".join(current).strip())
    return [b for b in blocks if b]


def _pack(heading: str, paragraphs: list[str], size: int, overlap: int) -> list[str]:
    """Paragraphs packed into chunks of at most ``size`` characters, each prefixed by ``heading``."""
    heading = heading[: size // 4]
    prefix = f"{heading}\n\n" if heading else ""
    budget = size - len(prefix)
    pieces = [piece for paragraph in paragraphs for piece in _split(paragraph, budget)]
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > budget:
            chunks.append(current)
            tail = _tail(current, overlap)
            current = f"{tail}\n\n{piece}" if tail and len(tail) + 2 + len(piece) <= budget else piece
        else:
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return [prefix + chunk for chunk in chunks]


def _split(paragraph: str, budget: int) -> list[str]:
    """``paragraph`` in pieces of at most ``budget`` characters: sentences, else words, else characters."""
    if len(paragraph) <= budget:
        return [paragraph]
    units = _SENTENCE_END.split(paragraph)
    if len(units) == 1:
        units = paragraph.split()
        if len(units) == 1:
            return [paragraph[i : i + budget] for i in range(0, len(paragraph), budget)]
    pieces: list[str] = []
    current = ""
    for unit in units:
        if len(unit) > budget:
            if current:
                pieces.append(current)
                current = ""
            pieces.extend(_split(unit, budget))
        elif current and len(current) + 1 + len(unit) > budget:
            pieces.append(current)
            current = unit
        else:
            current = f"{current} {unit}" if current else unit
    if current:
        pieces.append(current)
    return pieces


def _tail(text: str, overlap: int) -> str:
    """At most the last ``overlap`` characters of ``text``, starting at a word."""
    if overlap <= 0:
        return ""
    if len(text) <= overlap:
        return text
    tail = text[-overlap:]
    space = re.search(r"\s", tail)
    return tail[space.end() :].strip() if space else ""
