"""The keyring: AES-256-GCM values that carry their key id, rotation, and refusals that say why."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest

from welip.store import DecryptionError, Keyring, keyring_from_env


def _entry(kid: str) -> str:
    return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def test_round_trip_hides_the_text_and_names_the_key() -> None:
    keyring = Keyring.parse(_entry("k1"))
    sealed = keyring.encrypt("my card is 4111 1111 1111 1111", "audit_log.body:r1")
    assert sealed.startswith("wlpenc:v1:k1:") and "4111" not in sealed
    # A fresh nonce per value: the same text never gives the same ciphertext.
    assert keyring.encrypt("my card is 4111 1111 1111 1111", "audit_log.body:r1") != sealed
    assert keyring.decrypt(sealed, "audit_log.body:r1") == "my card is 4111 1111 1111 1111"


def test_values_under_the_old_key_read_back_after_rotation() -> None:
    k1, k2 = _entry("k1"), _entry("k2")
    old = Keyring.parse(k1).encrypt("written under k1", "ctx")
    rotated = Keyring.parse(f"{k2},{k1}")  # k2 first: the current key
    new = rotated.encrypt("written under k2", "ctx")
    assert new.startswith("wlpenc:v1:k2:")
    assert rotated.decrypt(old, "ctx") == "written under k1"
    assert rotated.decrypt(new, "ctx") == "written under k2"


def test_a_retired_key_id_is_named_in_the_error() -> None:
    old = Keyring.parse(_entry("k1")).encrypt("secret", "ctx")
    with pytest.raises(DecryptionError, match=r"key id 'k1'.*not configured \(configured: k2\)"):
        Keyring.parse(_entry("k2")).decrypt(old, "ctx")


def test_an_altered_or_moved_ciphertext_fails_authentication() -> None:
    keyring = Keyring.parse(_entry("k1"))
    sealed = keyring.encrypt("secret", "audit_log.body:r1")
    blob = bytearray(base64.b64decode(sealed.rsplit(":", 1)[1]))
    blob[-1] ^= 1
    tampered = "wlpenc:v1:k1:" + base64.b64encode(bytes(blob)).decode()
    with pytest.raises(DecryptionError, match="key id 'k1' fails authentication"):
        keyring.decrypt(tampered, "audit_log.body:r1")
    with pytest.raises(DecryptionError, match="key id 'k1' fails authentication"):
        keyring.decrypt(sealed, "audit_log.body:r2")  # copied onto another row
    with pytest.raises(DecryptionError, match=r"key id 'k1'.*not valid base64"):
        keyring.decrypt("wlpenc:v1:k1:not base64!", "audit_log.body:r1")


def test_plaintext_written_before_encryption_reads_back_and_no_keys_store_as_is() -> None:
    keyring = Keyring.parse(_entry("k1"))
    assert keyring.decrypt('{"model": "m"}', "ctx") == '{"model": "m"}'
    empty = Keyring()
    assert not empty.enabled and empty.encrypt("plain", "ctx") == "plain"
    with pytest.raises(DecryptionError, match=r"key id 'k1'.*configured: none"):
        empty.decrypt(keyring.encrypt("x", "ctx"), "ctx")


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("k1:" + base64.b64encode(b"x" * 16).decode(), "16 bytes; AES-256 takes 32"),
        ("k1:not-base64!!", "key 'k1' is not valid base64"),
        (base64.b64encode(b"x" * 32).decode(), "each entry is <key id>:<base64 key>"),
        ("bad id:" + base64.b64encode(b"x" * 32).decode(), "key id 'bad id' must be"),
        (_entry("k1") + "," + _entry("k1"), "key id 'k1' appears twice"),
    ],
)
def test_bad_key_material_is_refused_at_start(monkeypatch: pytest.MonkeyPatch, spec: str, error: str) -> None:
    monkeypatch.setenv("WELIP_ENCRYPTION_KEYS", spec)
    with pytest.raises(ValueError, match=error) as info:
        keyring_from_env()
    assert "WELIP_ENCRYPTION_KEYS" in str(info.value)
    assert spec.rsplit(":", 1)[-1] not in str(info.value)  # key material never reaches a log


def test_keys_from_a_mounted_secret_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    k2, k1 = _entry("k2"), _entry("k1")
    path = tmp_path / "keys"
    path.write_text(f"{k2}\n{k1}\n")
    monkeypatch.delenv("WELIP_ENCRYPTION_KEYS", raising=False)
    monkeypatch.setenv("WELIP_ENCRYPTION_KEYS_FILE", str(path))
    keyring = keyring_from_env()
    assert keyring.key_ids == ["k2", "k1"] and keyring.current_kid == "k2"
    assert Keyring.parse(k1).encrypt("x", "c").startswith("wlpenc:v1:k1:")
    assert keyring.decrypt(Keyring.parse(k1).encrypt("x", "c"), "c") == "x"
    monkeypatch.setenv("WELIP_ENCRYPTION_KEYS", k1)
    with pytest.raises(ValueError, match="not both"):
        keyring_from_env()
    monkeypatch.delenv("WELIP_ENCRYPTION_KEYS")
    monkeypatch.setenv("WELIP_ENCRYPTION_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="WELIP_ENCRYPTION_KEYS_FILE: cannot read"):
        keyring_from_env()


def test_no_keys_configured_means_no_encryption(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WELIP_ENCRYPTION_KEYS", raising=False)
    monkeypatch.delenv("WELIP_ENCRYPTION_KEYS_FILE", raising=False)
    assert not keyring_from_env().enabled
