"""Guardrails: PII detection (redact or block) and blocklists, on prompts and answers.

Streamed answers are checked over a sliding window per choice: text that could still
be the start of a match (a trailing run of digits, the word being written, or the
last ``window_chars`` when a regex blocklist is on) is held back until the next chunk
shows what it is, so a number split across chunks is still caught, while ordinary
words pass at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from welip.api import DONE, OpenAIError
from welip.trust._config import GuardrailPolicy, PiiKind

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"(?:\+82[- .]?0?|0)(?:1[016789]|2|[3-6][1-5]|70)[- .]?\d{3,4}[- .]?\d{4}"  # Korean mobile/landline
    r"|\+\d{1,3}[- .]?\(?\d{1,4}\)?(?:[- .]?\d{2,4}){2,4}"  # international
    r"|\(?\d{3}\)?[- .]\d{3}[- .]\d{4}"  # North American
    r")(?!\d)"
)
_CARD = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
_KR_RRN = re.compile(r"(?<!\d)(\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])[- ]?[1-8]\d{6}(?!\d)")
# Characters a digit-shaped match (phone, card, RRN) is made of, and those of an e-mail.
_DIGITISH_TAIL = re.compile(r"[0-9+()\-. ]*\d[0-9+()\-. ]*$")
_WORD_TAIL = re.compile(r"[A-Za-z0-9._%+\-@]+$")
_DIGIT_KINDS = frozenset({"phone", "credit_card", "kr_rrn"})


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _find(kind: PiiKind, text: str) -> Iterator[tuple[int, int]]:
    if kind == "email":
        pattern = _EMAIL
    elif kind == "phone":
        pattern = _PHONE
    elif kind == "kr_rrn":
        pattern = _KR_RRN
    else:
        for m in _CARD.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            if 13 <= len(digits) <= 19 and _luhn(digits):
                yield m.span()
        return
    for m in pattern.finditer(text):
        yield m.span()


# Most specific first: a 13-digit RRN is not also reported as a card or phone number.
_ORDER: tuple[PiiKind, ...] = ("kr_rrn", "credit_card", "email", "phone")


@dataclass(frozen=True)
class Finding:
    """One match: its kind and where it is."""

    kind: str
    start: int
    end: int


def find_pii(text: str, kinds: list[PiiKind]) -> list[Finding]:
    """Non-overlapping PII matches of ``kinds`` in ``text``, in order."""
    taken: list[Finding] = []
    for kind in _ORDER:
        if kind not in kinds:
            continue
        for start, end in _find(kind, text):
            if all(end <= f.start or start >= f.end for f in taken):
                taken.append(Finding(kind, start, end))
    return sorted(taken, key=lambda f: f.start)


def content_policy_violation(message: str) -> OpenAIError:
    """400 ``content_policy_violation``."""
    return OpenAIError(400, message, code="content_policy_violation")


@dataclass
class Verdict:
    """One kind of match in one direction, what was done about it, and how often."""

    direction: str  # input | output
    kind: str  # a PII kind, blocklist_regex, blocklist_keyword, max_prompt_tokens
    action: str  # redact | block
    count: int = 1


@dataclass
class Verdicts:
    """What the guardrails did to one request, for the audit record and metrics."""

    items: list[Verdict] = field(default_factory=list)

    def add(self, direction: str, kind: str, action: str, count: int = 1) -> None:
        for item in self.items:
            if (item.direction, item.kind, item.action) == (direction, kind, action):
                item.count += count
                return
        self.items.append(Verdict(direction, kind, action, count))

    @property
    def blocked(self) -> bool:
        return any(i.action == "block" for i in self.items)


class TextGuard:
    """One policy, compiled: checks and redacts text."""

    def __init__(self, policy: GuardrailPolicy, direction: str, window_chars: int) -> None:
        self.policy = policy
        self.direction = direction
        self.window_chars = window_chars
        self._regexes = [re.compile(p) for p in policy.blocklist_regex]
        self._keywords = (
            re.compile("|".join(re.escape(k) for k in policy.blocklist_keywords), re.IGNORECASE)
            if policy.blocklist_keywords
            else None
        )
        self._longest_keyword = max((len(k) for k in policy.blocklist_keywords), default=0)
        # Trailing text that may still become a match: a run of digit-ish characters
        # (phone, card, RRN), the word being written (e-mail).
        self._tail_patterns = [
            pattern
            for pattern, wanted in (
                (_DIGITISH_TAIL, bool(_DIGIT_KINDS & set(policy.pii))),
                (_WORD_TAIL, "email" in policy.pii),
            )
            if wanted
        ]
        self.active = bool(policy.pii or self._regexes or self._keywords)

    def apply(self, text: str, verdicts: Verdicts) -> str:
        """``text`` with PII redacted; raises 400 when a blocklist or a blocking PII kind matches."""
        for regex in self._regexes:
            if regex.search(text):
                verdicts.add(self.direction, "blocklist_regex", "block")
                raise content_policy_violation(f"The {self.direction} matches a blocked pattern.")
        if self._keywords is not None and self._keywords.search(text):
            verdicts.add(self.direction, "blocklist_keyword", "block")
            raise content_policy_violation(f"The {self.direction} contains a blocked keyword.")
        findings = find_pii(text, self.policy.pii) if self.policy.pii else []
        if not findings:
            return text
        if self.policy.pii_action == "block":
            for f in findings:
                verdicts.add(self.direction, f.kind, "block")
            kinds = ", ".join(sorted({f.kind for f in findings}))
            raise content_policy_violation(f"The {self.direction} contains personal data ({kinds}).")
        parts, last = [], 0
        for f in findings:
            parts += [text[last : f.start], f"[REDACTED:{f.kind}]"]
            verdicts.add(self.direction, f.kind, "redact")
            last = f.end
        parts.append(text[last:])
        return "".join(parts)

    def hold_from(self, text: str) -> int:
        """Where the part of ``text`` that may still grow into a match begins."""
        window_start = max(0, len(text) - self.window_chars)
        start = window_start if self._regexes else len(text)
        if self._longest_keyword:
            start = min(start, max(0, len(text) - self._longest_keyword + 1))
        tail = text[window_start:]
        for pattern in self._tail_patterns:
            m = pattern.search(tail)
            if m:
                start = min(start, window_start + m.start())
        return start


def guard_request(body: Any, guard: TextGuard, verdicts: Verdicts) -> None:
    """Check (and redact in place) the prompt of a chat or completion request, or embedding inputs."""
    texts = getattr(body, "input", None)
    if isinstance(texts, list):
        body.input = [guard.apply(t, verdicts) if isinstance(t, str) else t for t in texts]
        return
    messages = getattr(body, "messages", None)
    if messages is not None:
        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                message["content"] = guard.apply(content, verdicts)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        part["text"] = guard.apply(part["text"], verdicts)
        return
    prompt = body.prompt
    if isinstance(prompt, str):
        body.prompt = guard.apply(prompt, verdicts)
    elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        body.prompt = [guard.apply(p, verdicts) for p in prompt]


def guard_response(response: Any, guard: TextGuard, verdicts: Verdicts) -> None:
    """Check (and redact in place) a whole, non-streamed answer."""
    for choice in getattr(response, "choices", None) or []:
        message = getattr(choice, "message", None)
        if message is not None and isinstance(message.content, str):
            message.content = guard.apply(message.content, verdicts)
        elif isinstance(getattr(choice, "text", None), str):
            choice.text = guard.apply(choice.text, verdicts)


class StreamGuard:
    """Output guardrail over one SSE stream, holding back what may still become a match."""

    def __init__(self, guard: TextGuard, verdicts: Verdicts) -> None:
        self._guard = guard
        self._verdicts = verdicts
        self._held: dict[int, str] = {}
        self.blocked = False

    def _release(self, index: int, text: str, final: bool) -> str:
        buf = self._guard.apply(self._held.pop(index, "") + text, self._verdicts)
        cut = len(buf) if final else self._guard.hold_from(buf)
        if cut < len(buf):
            self._held[index] = buf[cut:]
        return buf[:cut]

    def _event(self, data: str) -> str:
        chunk = json.loads(data)
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            final = choice.get("finish_reason") is not None
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("content"), str) or (final and index in self._held):
                    delta["content"] = self._release(index, delta.get("content") or "", final)
            elif isinstance(choice.get("text"), str) or (final and index in self._held):
                choice["text"] = self._release(index, choice.get("text") or "", final)
        return json.dumps(chunk, separators=(",", ":"), ensure_ascii=False)

    def filter(self, text: str) -> str:
        """Check one batch of SSE events; a blocking match ends the stream with an error event."""
        if self.blocked:
            return ""
        out = []
        for event in text.split("\n\n"):
            if not event:
                continue
            data = event.removeprefix("data: ")
            if data == "[DONE]" or data.startswith('{"error"'):
                out.append(event + "\n\n")
                continue
            try:
                out.append(f"data: {self._event(data)}\n\n")
            except OpenAIError as exc:
                self.blocked = True
                out += [exc.to_sse(), DONE]
                break
        return "".join(out)
