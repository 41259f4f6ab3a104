"""Artifact storage: a local directory by default, ``s3://`` (MinIO, AWS) in production.

``WELIP_STORAGE_URL`` names the root (default ``~/.welip/artifacts``);
``WELIP_S3_ENDPOINT_URL`` points s3fs at MinIO or any S3-compatible endpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fsspec


def storage_url_from_env() -> str:
    """The artifact root: ``$WELIP_STORAGE_URL`` or ``~/.welip/artifacts``."""
    return os.environ.get("WELIP_STORAGE_URL") or str(Path.home() / ".welip" / "artifacts")


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path inside it.

    ``s3://`` uses s3fs with the endpoint from ``WELIP_S3_ENDPOINT_URL``; anything
    else is a local path (``~`` expanded).
    """
    if url.startswith("s3://"):
        import s3fs

        endpoint = os.environ.get("WELIP_S3_ENDPOINT_URL")
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else None)
        return fs, url.removeprefix("s3://").rstrip("/")
    return fsspec.filesystem("file"), str(Path(url).expanduser())


def join_url(root: str, *parts: str) -> str:
    """``root`` and ``parts`` joined with ``/`` (a URL or a local path)."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def read_bytes(url: str) -> bytes:
    """The content of the file at ``url``."""
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        data: bytes = f.read()
    return data


def write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` to ``url``, making parent directories of a local path."""
    fs, path = filesystem(url)
    if not url.startswith("s3://"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)
