"""Encryption at rest for what WeLIP stores itself: AES-256-GCM under rotating keys.

Keys come from ``WELIP_ENCRYPTION_KEYS`` or from the file ``WELIP_ENCRYPTION_KEYS_FILE``
names (a Kubernetes Secret mounted as a file), never both. Either holds a list of
``<key id>:<base64 of 32 random bytes>`` entries separated by commas or new lines;
the first is the current key, the others only decrypt::

    WELIP_ENCRYPTION_KEYS="k2:$(openssl rand -base64 32),k1:<the old key>"

Every value is sealed with a fresh random 96-bit nonce and carries the id of its key
in a self-describing prefix, ``wlpenc:v1:<key id>:<base64(nonce | ciphertext | tag)>``,
so rotating keys rewrites nothing: put the new key first, keep the old ones while rows
written under them are kept. A value without the prefix was written before encryption
was turned on and reads back as it is. The associated data binds a ciphertext to where
it belongs (``audit_log.body`` of one row id, say): a ciphertext moved to another row
or column fails authentication.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEYS_ENV = "WELIP_ENCRYPTION_KEYS"
KEYS_FILE_ENV = "WELIP_ENCRYPTION_KEYS_FILE"
PREFIX = "wlpenc:v1:"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's 96-bit nonce: random per message, safe for 2**32 messages per key
_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_MAX_KEYS = 64


class DecryptionError(ValueError):
    """A stored ciphertext that cannot be read: its key is not configured, or it was altered."""


class Keyring:
    """AES-256-GCM keys by id; the first is the one new values are sealed with.

    An empty keyring (no keys configured) stores values as they are, and reads back only
    values that were never encrypted.
    """

    def __init__(self, keys: Mapping[str, bytes] | None = None) -> None:
        """Args:
        keys: Key id to 32-byte key, the current key first (dicts keep their order).

        Raises:
            ValueError: A key id outside ``[A-Za-z0-9_-]{1,32}`` or a key not 32 bytes long.
        """
        keys = dict(keys or {})
        for kid, key in keys.items():
            if not _KID.fullmatch(kid):
                raise ValueError(f"encryption key id {kid!r} must be 1-32 of A-Z a-z 0-9 _ -")
            if len(key) != KEY_BYTES:
                raise ValueError(
                    f"encryption key {kid!r} is {len(key)} bytes; AES-256 takes {KEY_BYTES} "
                    "(make one with: openssl rand -base64 32)"
                )
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self.current_kid: str | None = next(iter(keys), None)

    @classmethod
    def parse(cls, spec: str, source: str = KEYS_ENV) -> Keyring:
        """A keyring from ``k2:<base64>,k1:<base64>`` (commas or new lines; the first is current).

        Raises:
            ValueError: Naming ``source`` and the entry: no ``id:``, bad base64, a key not
                32 bytes long, a repeated id.
        """
        keys: dict[str, bytes] = {}
        for entry in re.split(r"[,\n]", spec):
            entry = entry.strip()
            if not entry:
                continue
            kid, sep, material = entry.partition(":")
            kid = kid.strip()
            if not sep or not kid:
                raise ValueError(f"{source}: each entry is <key id>:<base64 key>, not {_masked(entry)!r}")
            try:
                key = base64.b64decode(material.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{source}: key {kid!r} is not valid base64") from None
            if kid in keys:
                raise ValueError(f"{source}: key id {kid!r} appears twice")
            keys[kid] = key
        if len(keys) > _MAX_KEYS:
            raise ValueError(f"{source}: {len(keys)} keys, at most {_MAX_KEYS}")
        try:
            return cls(keys)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def generate(cls, kid: str = "k1") -> tuple[Keyring, str]:
        """A keyring with one fresh random key, and its ``<id>:<base64>`` entry (tests, set-up)."""
        entry = f"{kid}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"
        return cls.parse(entry, "generated"), entry

    @staticmethod
    def is_encrypted(value: str) -> bool:
        """Whether ``value`` is a ciphertext of this format (not a plaintext written before)."""
        return value.startswith(PREFIX)

    @property
    def enabled(self) -> bool:
        """Whether new values are encrypted (a key is configured)."""
        return self.current_kid is not None

    @property
    def key_ids(self) -> list[str]:
        """The configured key ids, the current one first."""
        return list(self._ciphers)

    def encrypt(self, text: str, context: str) -> str:
        """``text`` sealed under the current key, or ``text`` itself when no key is configured.

        Args:
            text: The value to store.
            context: Where it is stored (``audit_log.body:<row id>``); decrypting needs the same.
        """
        if self.current_kid is None:
            return text
        kid, blob = self.encrypt_bytes(text.encode(), context)
        return f"{PREFIX}{kid}:{base64.b64encode(blob).decode()}"

    def decrypt(self, value: str, context: str) -> str:
        """The text ``encrypt`` sealed, under whichever configured key it names; a value never
        encrypted (no ``wlpenc:v1:`` prefix) as it is.

        Raises:
            DecryptionError: Naming the key id: it is not configured, or the value was
                altered or belongs to another context.
        """
        if not value.startswith(PREFIX):
            return value
        kid, sep, payload = value[len(PREFIX) :].partition(":")
        if not sep:
            raise DecryptionError(f"malformed encrypted value for {context}: no key id")
        try:
            blob = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise DecryptionError(
                f"encrypted value under key id {kid!r} for {context} is not valid base64 (altered?)"
            ) from None
        return self.decrypt_bytes(kid, blob, context).decode()

    def encrypt_bytes(self, data: bytes, context: str) -> tuple[str, bytes]:
        """``(key id, nonce | ciphertext | tag)`` under the current key.

        Raises:
            DecryptionError: No key is configured (callers check :attr:`enabled`).
        """
        kid = self.current_kid
        if kid is None:
            raise DecryptionError(f"no encryption key configured ({KEYS_ENV} or {KEYS_FILE_ENV})")
        nonce = secrets.token_bytes(NONCE_BYTES)
        return kid, nonce + self._ciphers[kid].encrypt(nonce, data, _aad(kid, context))

    def decrypt_bytes(self, kid: str, blob: bytes, context: str) -> bytes:
        """The bytes :meth:`encrypt_bytes` sealed under key ``kid`` for ``context``.

        Raises:
            DecryptionError: Naming ``kid``: not configured, or the blob fails authentication.
        """
        cipher = self._ciphers.get(kid)
        if cipher is None:
            known = ", ".join(self._ciphers) or "none"
            raise DecryptionError(
                f"value for {context} is encrypted under key id {kid!r}, which is not configured "
                f"(configured: {known}); add it to {KEYS_ENV} or {KEYS_FILE_ENV}"
            )
        try:
            return cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(kid, context))
        except InvalidTag:
            raise DecryptionError(
                f"value for {context} under key id {kid!r} fails authentication: altered, "
                "truncated, or written for another place"
            ) from None


def keyring_from_env() -> Keyring:
    """The keyring ``WELIP_ENCRYPTION_KEYS`` or ``WELIP_ENCRYPTION_KEYS_FILE`` configures
    (empty when neither is set), parsed once per distinct setting.

    A rotated Secret file is read again only by a new process (replicas restart on rotation).

    Raises:
        ValueError: Both are set, the file cannot be read, or a key is malformed: raised where
            a service builds its stores at start-up, never on a request.
    """
    return _keyring(os.environ.get(KEYS_ENV, ""), os.environ.get(KEYS_FILE_ENV, ""))


@functools.lru_cache(maxsize=8)
def _keyring(spec: str, path: str) -> Keyring:
    if spec.strip() and path.strip():
        raise ValueError(f"set {KEYS_ENV} or {KEYS_FILE_ENV}, not both")
    if path.strip():
        try:
            spec = Path(path.strip()).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{KEYS_FILE_ENV}: cannot read {path!r}: {exc.strerror}") from None
        return Keyring.parse(spec, f"{KEYS_FILE_ENV} ({path.strip()})")
    return Keyring.parse(spec)


def _aad(kid: str, context: str) -> bytes:
    return f"{PREFIX}{kid}:{context}".encode()


def _masked(entry: str) -> str:
    # An entry without a key id may be a bare key: never echo key material into logs.
    return entry[:4] + "..." if len(entry) > 4 else entry
