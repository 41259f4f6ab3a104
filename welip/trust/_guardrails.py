"""Guardrails: PII detection (redact or block) and blocklists, on prompts and answers.

Every text a model reads or writes is checked, not only the messages' content: names,
reasoning, tool definitions and tool calls, template arguments, a prompt given as
token ids (read with the model's tokenizer); what a text guardrail cannot read (prompt
embeddings) is refused. Media parts (images, audio, video) are not text and pass as sent.

Streamed answers are checked over a sliding window per choice: text that could still
be the start of a match (a trailing run of digits, the word being written, or the
last ``window_chars`` when a regex blocklist is on) is held back until the next chunk
shows what it is, so a number split across chunks is still caught, while ordinary
words pass at once.

Beside the regexes, a policy may take checks from elsewhere (:mod:`welip.trust._checks`):
Presidio's pattern recognizers find PII like the regexes do, and a judge model rules
on the whole text (:func:`judge_texts`) after the text guard has redacted it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from welip.api import DONE, OpenAIError, invalid_request
from welip.trust._checks import JudgeCheck, JudgeUnavailable, PresidioCheck, SpanCheck, judge_unavailable
from welip.trust._config import GuardrailPolicy, PiiKind

logger = logging.getLogger("welip.gateway")

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
    # a PII kind (a Presidio entity in lower case), blocklist_regex, blocklist_keyword,
    # max_prompt_tokens, judge, judge_unavailable
    kind: str
    action: str  # redact | block | allow (a fail-open judge that gave no verdict)
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
        self.presidio: SpanCheck | None = PresidioCheck(policy.presidio) if policy.presidio else None
        self.judge = JudgeCheck(policy.judge) if policy.judge else None
        # Trailing text that may still become a match: a run of digit-ish characters
        # (phone, card, RRN), the word being written (e-mail); an address, like a regex,
        # may be anywhere in the window.
        self._tail_patterns = [
            pattern
            for pattern, wanted in (
                (_DIGITISH_TAIL, bool(_DIGIT_KINDS & set(policy.pii)) or self.presidio is not None),
                (_WORD_TAIL, "email" in policy.pii),
            )
            if wanted
        ]
        self._holds_window = bool(self._regexes) or (
            policy.presidio is not None and "KR_ADDRESS" in policy.presidio.entities
        )
        self.finds = bool(policy.pii or self.presidio)
        self.active = bool(self.finds or self._regexes or self._keywords or self.judge)

    def apply(self, text: str, verdicts: Verdicts) -> str:
        """``text`` with PII redacted; raises 400 when a blocklist or a blocking PII kind matches."""
        for regex in self._regexes:
            if regex.search(text):
                verdicts.add(self.direction, "blocklist_regex", "block")
                raise content_policy_violation(f"The {self.direction} matches a blocked pattern.")
        if self._keywords is not None and self._keywords.search(text):
            verdicts.add(self.direction, "blocklist_keyword", "block")
            raise content_policy_violation(f"The {self.direction} contains a blocked keyword.")
        findings = self._find(text) if self.finds else []
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

    def _find(self, text: str) -> list[Finding]:
        """The built-in kinds' matches, then Presidio's where they overlap none of them."""
        findings = find_pii(text, self.policy.pii) if self.policy.pii else []
        if self.presidio is not None:
            for kind, start, end in sorted(self.presidio.find(text), key=lambda s: (s[1], -s[2])):
                if all(end <= f.start or start >= f.end for f in findings):
                    findings.append(Finding(kind, start, end))
            findings.sort(key=lambda f: f.start)
        return findings

    def hold_from(self, text: str) -> int:
        """Where the part of ``text`` that may still grow into a match begins."""
        window_start = max(0, len(text) - self.window_chars)
        start = window_start if self._holds_window else len(text)
        if self._longest_keyword:
            start = min(start, max(0, len(text) - self._longest_keyword + 1))
        tail = text[window_start:]
        for pattern in self._tail_patterns:
            m = pattern.search(tail)
            if m:
                start = min(start, window_start + m.start())
        return start


class _Collector:
    """Stands in for a guard to collect every text a request or answer carries (for the judge)."""

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.texts: list[str] = []

    def apply(self, text: str, verdicts: Verdicts) -> str:
        self.texts.append(text)
        return text


async def judge_texts(texts: list[str], guard: TextGuard, verdicts: Verdicts) -> None:
    """The guard's judge on ``texts``, as one text: passes, or raises the refusal.

    Raises:
        OpenAIError: 400 ``content_policy_violation`` when the judge finds them unsafe or
            they are longer than it reads (``max_calls`` x ``max_chars``); 503
            ``guardrail_unavailable`` when it gives no verdict and ``on_error`` is block.
    """
    judge, direction = guard.judge, guard.direction
    if judge is None:
        return
    parts = judge.parts(texts)
    if len(parts) > judge.config.max_calls:
        verdicts.add(direction, "judge", "block")
        most = judge.config.max_calls * judge.config.max_chars
        raise content_policy_violation(
            f"The {direction} is longer than this gateway's guardrail judge reads ({most} characters)."
        )
    try:
        unsafe = await judge.unsafe(parts)
    except JudgeUnavailable as exc:
        logger.warning("%s guardrail judge unavailable (%s): %s", direction, judge.config.on_error, exc)
        verdicts.add(direction, "judge_unavailable", "allow" if judge.config.on_error == "allow" else "block")
        if judge.config.on_error == "allow":
            return
        raise judge_unavailable(direction) from None
    if unsafe:
        verdicts.add(direction, "judge", "block")
        raise content_policy_violation(f"The {direction} was judged unsafe by this gateway's guardrail.")


async def judge_request(body: Any, guard: TextGuard, verdicts: Verdicts, tokens: TokenCodec | None) -> None:
    """The guard's judge on every text of a request the model reads (as :func:`guard_request` walks it)."""
    if guard.judge is not None:
        collector = _Collector(guard.direction)
        guard_request(body, collector, verdicts, tokens)
        await judge_texts(collector.texts, guard, verdicts)


async def judge_response(response: Any, guard: TextGuard, verdicts: Verdicts) -> None:
    """The guard's judge on a whole answer's texts (as :func:`guard_response` walks it)."""
    if guard.judge is not None:
        collector = _Collector(guard.direction)
        guard_response(response, collector, verdicts)
        await judge_texts(collector.texts, guard, verdicts)


async def judge_json(value: Any, guard: TextGuard, verdicts: Verdicts) -> None:
    """The guard's judge on every string of JSON-ready data (as :func:`guard_json` walks it)."""
    if guard.judge is not None:
        collector = _Collector(guard.direction)
        _guard_json(value, collector, verdicts)
        await judge_texts(collector.texts, guard, verdicts)


class Applies(Protocol):
    """What the request and answer walkers call on each text: a :class:`TextGuard`, or a collector."""

    direction: str

    def apply(self, text: str, verdicts: Verdicts) -> str: ...


class TokenCodec(Protocol):
    """A model's tokenizer, as the input guardrail reads a prompt given as token ids."""

    def decode(self, ids: list[int]) -> str: ...

    def encode(self, text: str) -> list[int]: ...


# Content-part keys whose values are media (images, audio, video, files, their
# embeddings), not text: a text guardrail cannot judge them, and rewriting the base64
# in them would corrupt them.
_MEDIA_KEYS = frozenset(
    {
        "image_url",
        "image_pil",
        "image_embeds",
        "input_audio",
        "audio_url",
        "audio_embeds",
        "video_url",
        "video_embeds",
        "file",
        "uuid",
    }
)
# Request fields the input guardrail checks besides the messages, prompt and inputs:
# chat templates render them into the prompt.
_TEMPLATE_FIELDS = ("chat_template", "chat_template_kwargs", "documents")
GUARDED_FIELDS = ("messages", "tools", *_TEMPLATE_FIELDS, "prompt", "suffix", "input")
"""The request fields :func:`guard_request` may rewrite (:func:`guarded_body` takes them from the request)."""


def _unreadable(what: str, param: str) -> OpenAIError:
    return OpenAIError(
        400,
        f"Input guardrails apply to your role, and they cannot read {what}; send the prompt as text.",
        param=param,
        code="unsupported_value",
    )


def guard_request(body: Any, guard: Applies, verdicts: Verdicts, tokens: TokenCodec | None = None) -> None:
    """Check (and redact in place) every text of a request the model will read.

    Chat: each message's text (content and its text parts, ``name``, reasoning, tool
    calls' names and arguments) but not its role or media; the request's ``tools``,
    ``chat_template``, ``chat_template_kwargs`` and ``documents``, their keys included (a
    tool's parameter names and template variables are rendered into the prompt).
    Completions: the prompt, as text or as token ids (decoded with ``tokens``, the
    model's tokenizer, and encoded again only when redacted), and ``suffix``.
    Embeddings: each input. Numbers are checked as the digits the model reads.

    Raises:
        OpenAIError: 400 ``content_policy_violation`` on a blocking match; 400
            ``unsupported_value`` for what the guardrail cannot read (prompt embeddings,
            token ids without a tokenizer); 400 ``invalid_value`` for token ids outside
            the model's vocabulary.
    """
    texts = getattr(body, "input", None)
    if isinstance(texts, list):
        body.input = [guard.apply(t, verdicts) if isinstance(t, str) else t for t in texts]
        return
    messages = getattr(body, "messages", None)
    if messages is not None:
        for i, message in enumerate(messages):
            if isinstance(message, dict):
                _guard_message(message, guard, verdicts, f"messages[{i}]")
        if getattr(body, "tools", None):
            body.tools = _guard_json(body.tools, guard, verdicts, keys=True)
        for name in _TEMPLATE_FIELDS:
            if getattr(body, name, None) is not None:
                setattr(body, name, _guard_json(getattr(body, name), guard, verdicts, keys=True))
        return
    if getattr(body, "prompt_embeds", None) is not None:
        raise _unreadable("prompt embeddings", "prompt_embeds")
    prompt = body.prompt
    if isinstance(prompt, str):
        body.prompt = guard.apply(prompt, verdicts)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        body.prompt = [guard.apply(p, verdicts) for p in prompt]
    elif isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        body.prompt = _guard_ids(prompt, guard, verdicts, tokens)
    elif isinstance(prompt, list):
        body.prompt = [_guard_ids(p, guard, verdicts, tokens) for p in prompt]
    if isinstance(getattr(body, "suffix", None), str):
        body.suffix = guard.apply(body.suffix, verdicts)


def _guard_message(message: dict[str, Any], guard: Applies, verdicts: Verdicts, where: str) -> None:
    for key, value in message.items():
        if key == "role" or value is None:
            continue  # the role is a label the parser checked, not text
        if key == "content" and isinstance(value, list):
            message[key] = [_guard_part(part, guard, verdicts, f"{where}.content") for part in value]
        else:
            # A developer message may carry its own `tools`, keys rendered like the request's.
            message[key] = _guard_json(value, guard, verdicts, keys=key == "tools")


def _guard_part(part: Any, guard: Applies, verdicts: Verdicts, param: str) -> Any:
    """One content part: its text checked (text, refusal, thinking, ...), its media left as sent."""
    if not isinstance(part, dict):
        return _guard_json(part, guard, verdicts)
    kind = part.get("type")
    if kind == "prompt_embeds":
        raise _unreadable("prompt embeddings", param)
    return {
        key: value
        if key == "type" or key in _MEDIA_KEYS or (key == kind and not isinstance(value, str))
        else _guard_json(value, guard, verdicts)
        for key, value in part.items()
    }


def _guard_json(value: Any, guard: Applies, verdicts: Verdicts, *, keys: bool = False) -> Any:
    """``value`` with every string (and, with ``keys``, every key) checked; numbers as the digits they are."""
    if isinstance(value, str):
        return guard.apply(value, verdicts)
    if isinstance(value, bool) or not isinstance(value, int | list | tuple | dict | BaseModel):
        return value
    if isinstance(value, int):
        digits = str(value)
        checked = guard.apply(digits, verdicts)
        return value if checked == digits else checked
    if isinstance(value, list | tuple):
        return [_guard_json(v, guard, verdicts, keys=keys) for v in value]
    if isinstance(value, BaseModel):  # a request's typed part (a tool): checked as the JSON it renders as
        dumped = value.model_dump(mode="json", exclude_unset=True)
        return type(value).model_validate(_guard_json(dumped, guard, verdicts, keys=keys))
    out: dict[Any, Any] = {}
    for k, v in value.items():
        key = guard.apply(k, verdicts) if keys and isinstance(k, str) else k
        out[key] = _guard_json(v, guard, verdicts, keys=keys)
    return out


def guard_json(value: Any, guard: TextGuard, verdicts: Verdicts) -> Any:
    """JSON-ready data with every string value checked (and redacted), numbers as their digits."""
    return _guard_json(value, guard, verdicts)


def _guard_ids(ids: list[int], guard: Applies, verdicts: Verdicts, tokens: TokenCodec | None) -> list[int]:
    """A token-id prompt checked as the text the model reads; the ids of the redacted text if it changed."""
    if tokens is None:
        raise _unreadable(
            "token ids without the model's tokenizer, which this gateway has not loaded", "prompt"
        )
    try:
        text = tokens.decode(ids)
    except ValueError as exc:
        raise invalid_request(f"`prompt`: {exc}.", param="prompt") from None
    checked = guard.apply(text, verdicts)
    return ids if checked == text else tokens.encode(checked)


def guarded_body(body: Any, raw: bytes) -> str:
    """The request as received, with the fields the input guardrail checked as it left them (redacted)."""
    payload = json.loads(raw)
    for name in GUARDED_FIELDS:
        if name in payload:
            value = getattr(body, name, None)
            if isinstance(value, list):
                value = [
                    v.model_dump(mode="json", exclude_unset=True) if isinstance(v, BaseModel) else v
                    for v in value
                ]
            payload[name] = value
    return json.dumps(payload, ensure_ascii=False)


# Text fields of an answer's message or a streamed delta (vLLM names reasoning
# `reasoning`; before 0.11 and in other servers it is `reasoning_content`).
_ANSWER_TEXT = ("content", "reasoning", "reasoning_content", "refusal")


def guard_response(response: Any, guard: Applies, verdicts: Verdicts) -> None:
    """Check (and redact in place) a whole, non-streamed answer: its text, reasoning and tool calls."""
    for choice in getattr(response, "choices", None) or []:
        message = getattr(choice, "message", None)
        if message is not None:
            for name in _ANSWER_TEXT:
                if isinstance(getattr(message, name, None), str):
                    setattr(message, name, guard.apply(getattr(message, name), verdicts))
            calls = getattr(message, "tool_calls", None) or []
            functions = [getattr(call, "function", None) for call in calls]
            for function in [*functions, getattr(message, "function_call", None)]:
                for name in ("name", "arguments"):
                    if isinstance(getattr(function, name, None), str):
                        setattr(function, name, guard.apply(getattr(function, name), verdicts))
        elif isinstance(getattr(choice, "text", None), str):
            choice.text = guard.apply(choice.text, verdicts)


_Key = tuple[int, str, int]
"""Where the stream guard holds text back: choice, field (``tool_calls``: a call's arguments), call."""


class StreamGuard:
    """Output guardrail over one SSE stream, holding back what may still become a match.

    Each text field of each choice is a stream of its own: the answer, its reasoning,
    each tool call's arguments (a tool's name arrives whole). What a field holds back is
    released at the choice's finish.
    """

    def __init__(self, guard: TextGuard, verdicts: Verdicts) -> None:
        self._guard = guard
        self._verdicts = verdicts
        self._held: dict[_Key, str] = {}
        self.blocked = False

    def _release(self, key: _Key, text: str, final: bool) -> str:
        buf = self._guard.apply(self._held.pop(key, "") + text, self._verdicts)
        cut = len(buf) if final else self._guard.hold_from(buf)
        if cut < len(buf):
            self._held[key] = buf[cut:]
        return buf[:cut]

    def _event(self, data: str) -> str:
        chunk = json.loads(data)
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            final = choice.get("finish_reason") is not None
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(index, delta, final)
            elif isinstance(choice.get("text"), str) or (final and (index, "text", 0) in self._held):
                choice["text"] = self._release((index, "text", 0), choice.get("text") or "", final)
        return json.dumps(chunk, separators=(",", ":"), ensure_ascii=False)

    def _delta(self, index: int, delta: dict[str, Any], final: bool) -> None:
        arrived = {(index, name, 0): delta[name] for name in _ANSWER_TEXT if isinstance(delta.get(name), str)}
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                continue
            if isinstance(function.get("name"), str):
                function["name"] = self._guard.apply(function["name"], self._verdicts)
            if isinstance(function.get("arguments"), str):
                arrived[(index, "tool_calls", call.get("index", 0))] = function["arguments"]
        if final:
            # Fields that were still holding text back and sent nothing in the last delta.
            for key in [k for k in self._held if k[0] == index and k not in arrived]:
                _put(delta, key, self._release(key, "", final=True))
        for key, text in arrived.items():
            _put(delta, key, self._release(key, text, final))

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


def _put(delta: dict[str, Any], key: _Key, text: str) -> None:
    """Set one field of a delta (a tool call's arguments: that call's, added if the delta lacks it)."""
    _, name, call_index = key
    if name != "tool_calls":
        delta[name] = text
        return
    calls = delta.get("tool_calls")
    if not isinstance(calls, list):
        calls = delta["tool_calls"] = []
    for call in calls:
        if (
            isinstance(call, dict)
            and call.get("index", 0) == call_index
            and isinstance(call.get("function"), dict)
        ):
            call["function"]["arguments"] = text
            return
    calls.append({"index": call_index, "function": {"arguments": text}})
