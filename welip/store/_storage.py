"""Artifact storage: a local directory by default, ``s3://`` (MinIO, AWS) in production.

``WELIP_STORAGE_URL`` names the root (default ``~/.welip/artifacts``);
``WELIP_S3_ENDPOINT_URL`` points s3fs at MinIO or any S3-compatible endpoint;
``WELIP_S3_CA_BUNDLE`` names a PEM file of CA certificates that endpoint's HTTPS
certificate is verified against (a private CA), instead of the system's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fsspec


def storage_url_from_env() -> str:
    """The artifact root: ``$WELIP_STORAGE_URL`` or ``~/.welip/artifacts``."""
    return os.environ.get("WELIP_STORAGE_URL") or str(Path.home() / ".welip" / "artifacts")


S3_CA_BUNDLE_ENV = "WELIP_S3_CA_BUNDLE"


def s3_client_kwargs() -> dict[str, Any]:
    """botocore client arguments for WeLIP's S3 endpoint: ``endpoint_url`` and ``verify``.

    ``endpoint_url`` from ``WELIP_S3_ENDPOINT_URL``; ``verify`` is the CA bundle of
    ``WELIP_S3_CA_BUNDLE`` (certificates are always verified: without it, against the
    system's CAs or ``AWS_CA_BUNDLE``).

    Raises:
        FileNotFoundError: ``WELIP_S3_CA_BUNDLE`` names no file (a missing Secret mount
            would otherwise surface as a certificate error on the first request).
    """
    kwargs: dict[str, Any] = {}
    endpoint = os.environ.get("WELIP_S3_ENDPOINT_URL")
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    ca_bundle = os.environ.get(S3_CA_BUNDLE_ENV)
    if ca_bundle:
        if not Path(ca_bundle).is_file():
            raise FileNotFoundError(f"{S3_CA_BUNDLE_ENV}={ca_bundle} is not a file")
        kwargs["verify"] = ca_bundle
    return kwargs


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path inside it.

    ``s3://`` uses s3fs with :func:`s3_client_kwargs` (``WELIP_S3_ENDPOINT_URL``,
    ``WELIP_S3_CA_BUNDLE``); anything else is a local path (``~`` expanded).
    """
    if url.startswith("s3://"):
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs=s3_client_kwargs() or None)
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
