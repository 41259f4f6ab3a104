"""The gateway's token counter loads its tokenizer from a local directory, never the Hub."""

from __future__ import annotations

from typing import Any

import pytest
import transformers

from welip.trust import TokenCounter


def test_token_counter_never_downloads_from_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def from_pretrained(path: str, **kwargs: Any) -> object:
        calls.append((path, kwargs))
        return object()  # no chat template: nothing to measure

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", staticmethod(from_pretrained))
    TokenCounter.load("some-org/some-model")
    assert calls == [("some-org/some-model", {"local_files_only": True})]
