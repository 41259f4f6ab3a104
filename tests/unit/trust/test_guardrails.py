"""PII detectors and the streaming window."""

from __future__ import annotations

import pytest

from welip.trust import GuardrailPolicy, find_pii
from welip.trust._guardrails import TextGuard, Verdicts

ALL = ["email", "phone", "credit_card", "kr_rrn"]


@pytest.mark.parametrize(
    ("text", "kind", "match"),
    [
        ("write to hong.gildong+x@corp.example.co.kr today", "email", "hong.gildong+x@corp.example.co.kr"),
        ("call 010-1234-5678 now", "phone", "010-1234-5678"),
        ("call 01012345678 now", "phone", "01012345678"),
        ("office 02-123-4567.", "phone", "02-123-4567"),
        ("from abroad +82 10 9876 5432", "phone", "+82 10 9876 5432"),
        ("US (415) 555-0100", "phone", "(415) 555-0100"),
        ("card 4111 1111 1111 1111 ok", "credit_card", "4111 1111 1111 1111"),
        ("amex 3782-822463-10005", "credit_card", "3782-822463-10005"),
        ("rrn 900101-1234567", "kr_rrn", "900101-1234567"),
        ("rrn 0312254123456 end", "kr_rrn", "0312254123456"),
    ],
)
def test_each_kind_is_found(text: str, kind: str, match: str) -> None:
    (finding,) = find_pii(text, ALL)  # type: ignore[arg-type]
    assert (finding.kind, text[finding.start : finding.end]) == (kind, match)


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "month 13 is no date: 901301-1234567",
        "order 12345 shipped in 2024",
        "version 1.2.3 at 10:45",
    ],
)
def test_lookalikes_are_not_pii(text: str) -> None:
    assert find_pii(text, ALL) == []  # type: ignore[arg-type]


def test_redaction_names_the_kind_and_block_raises() -> None:
    verdicts = Verdicts()
    guard = TextGuard(GuardrailPolicy(pii=["kr_rrn", "email"]), "output", 64)
    assert guard.apply("a@b.io and 900101-1234567", verdicts) == "[REDACTED:email] and [REDACTED:kr_rrn]"
    blocking = TextGuard(GuardrailPolicy(pii=["email"], pii_action="block"), "input", 64)
    with pytest.raises(Exception) as raised:
        blocking.apply("a@b.io", verdicts)
    assert getattr(raised.value, "code", None) == "content_policy_violation"
    assert [v.action for v in verdicts.items] == ["redact", "redact", "block"]


def test_ordinary_words_are_not_held_back_but_digits_are() -> None:
    guard = TextGuard(GuardrailPolicy(pii=["kr_rrn"]), "output", 64)
    assert guard.hold_from("The capital of France") == len("The capital of France")
    text = "Her number is 900101-12"
    assert text[guard.hold_from(text) :] == " 900101-12"
