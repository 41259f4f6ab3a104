"""Uploaded files (``/v1/files``): metadata in the ``files`` table, content in the artifact storage.

A file belongs to the principal that uploaded it: every read and delete names the
owner, and another owner's file is as absent as one that never existed. Expired files
(``expires_at`` passed) are never returned; :meth:`FileStore.purge_expired` deletes
their rows and content.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import sqlalchemy as sa

from welip.store._database import Database, as_utc, utcnow
from welip.store._pages import owner_page
from welip.store._schema import files
from welip.store._storage import filesystem, join_url

logger = logging.getLogger("welip.store")

_CHUNK_BYTES = 1024 * 1024  # content is copied and served in pieces of this size, never whole


@dataclass(frozen=True, kw_only=True)
class FileRecord:
    """One uploaded file: a row of ``files``."""

    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    sha256: str
    content_url: str
    created_at: datetime
    expires_at: datetime | None = None

    def openai(self) -> dict[str, Any]:
        """The file object as OpenAI's API returns it (no owner, no storage location)."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": int(self.created_at.timestamp()),
            "expires_at": int(self.expires_at.timestamp()) if self.expires_at is not None else None,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


class FileStore:
    """The ``files`` table and the content under ``<storage_url>/files/``."""

    def __init__(self, database: Database, storage_url: str) -> None:
        self._engine = database.engine
        self._root = join_url(storage_url, "files")

    def create_file(
        self,
        *,
        owner: str,
        purpose: str,
        filename: str,
        content: BinaryIO,
        expires_at: datetime | None,
    ) -> FileRecord:
        """Copy ``content`` (from its current position) to storage, then record it.

        The content is copied in pieces; if recording fails, the copy is removed.
        """
        file_id = "file-" + uuid.uuid4().hex
        url = join_url(self._root, file_id)
        size, digest = _copy(content, url)
        record = FileRecord(
            id=file_id,
            owner=owner,
            purpose=purpose,
            filename=filename,
            bytes=size,
            sha256=digest,
            content_url=url,
            created_at=utcnow(),
            expires_at=expires_at,
        )
        try:
            with self._engine.begin() as conn:
                conn.execute(files.insert().values(**asdict(record)))
        except BaseException:
            _remove(url)
            raise
        return record

    def stored_bytes(self, owner: str) -> int:
        """Bytes of ``owner``'s unexpired files."""
        query = sa.select(sa.func.coalesce(sa.func.sum(files.c.bytes), 0)).where(
            files.c.owner == owner, _live(utcnow())
        )
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def get_file(self, file_id: str, owner: str) -> FileRecord | None:
        """``owner``'s unexpired file ``file_id``, or None (another owner's file is None too)."""
        query = files.select().where(files.c.id == file_id, files.c.owner == owner, _live(utcnow()))
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _record(row) if row is not None else None

    def list_files(
        self,
        owner: str,
        *,
        purpose: str | None = None,
        limit: int = 10_000,
        after: str | None = None,
        order: Literal["asc", "desc"] = "desc",
    ) -> tuple[list[FileRecord], bool]:
        """A page of ``owner``'s unexpired files by creation time, and whether more follow.

        ``after`` is the id of the last file of the previous page; an id that is not one
        of the owner's files starts from the beginning.
        """
        query = files.select().where(files.c.owner == owner, _live(utcnow()))
        if purpose is not None:
            query = query.where(files.c.purpose == purpose)
        with self._engine.connect() as conn:
            rows, more = owner_page(conn, files, query, owner, limit=limit, after=after, order=order)
        return [_record(r) for r in rows], more

    def open_content(self, record: FileRecord) -> BinaryIO:
        """The file's content, opened for reading (the caller closes it).

        Raises:
            FileNotFoundError: the content is missing from storage.
        """
        fs, path = filesystem(record.content_url)
        f: BinaryIO = fs.open(path, "rb")
        return f

    def delete_file(self, file_id: str, owner: str) -> bool:
        """Delete ``owner``'s file ``file_id``, row and content; False if there is none."""
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.select(files.c.content_url).where(
                    files.c.id == file_id, files.c.owner == owner, _live(utcnow())
                )
            ).first()
            if row is None:
                return False
            conn.execute(files.delete().where(files.c.id == file_id))
        _remove(row[0])
        return True

    def purge_expired(self, owner: str | None = None) -> int:
        """Delete expired files (``owner``'s, or everyone's), rows and content; how many."""
        query = sa.select(files.c.id, files.c.content_url).where(sa.not_(_live(utcnow())))
        if owner is not None:
            query = query.where(files.c.owner == owner)
        with self._engine.begin() as conn:
            expired = conn.execute(query).all()
            if expired:
                conn.execute(files.delete().where(files.c.id.in_([r[0] for r in expired])))
        for _, url in expired:
            _remove(url)
        return len(expired)


def _live(now: datetime) -> Any:
    return sa.or_(files.c.expires_at.is_(None), files.c.expires_at > now)


def _copy(source: BinaryIO, url: str) -> tuple[int, str]:
    """Copy ``source`` to ``url`` in pieces: its size and sha256."""
    fs, path = filesystem(url)
    if not url.startswith("s3://"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    try:
        with fs.open(path, "wb") as out:
            while chunk := source.read(_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except BaseException:
        _remove(url)
        raise
    return size, digest.hexdigest()


def _remove(url: str) -> None:
    fs, path = filesystem(url)
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass
    except Exception:  # the row is gone; a leftover object only costs space
        logger.warning("could not remove file content at %s", url, exc_info=True)


def _record(row: Mapping[Any, Any]) -> FileRecord:
    expires_at = row["expires_at"]
    return FileRecord(
        **{
            **row,
            "created_at": as_utc(row["created_at"]),
            "expires_at": as_utc(expires_at) if expires_at is not None else None,
        }
    )
