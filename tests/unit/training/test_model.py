"""The training model loaders read local directories only, never the Hugging Face Hub."""

from __future__ import annotations

from typing import Any

import pytest
import transformers

from welip.training import load_tokenizer


class _Tokenizer:
    pad_token = None
    eos_token = "</s>"


def test_load_tokenizer_never_downloads_from_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def from_pretrained(path: str, **kwargs: Any) -> _Tokenizer:
        calls.append((path, kwargs))
        return _Tokenizer()

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", staticmethod(from_pretrained))
    tokenizer = load_tokenizer("some-org/some-model")  # a Hub id: transformers must not fetch it
    assert calls == [("some-org/some-model", {"local_files_only": True})]
    assert tokenizer.pad_token == "</s>"
