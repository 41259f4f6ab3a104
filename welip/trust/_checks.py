"""Guardrail checks from established libraries and served models, beside the built-in regexes.

Two shapes of check, composed into a :class:`~welip.trust._guardrails.TextGuard`:

* a :class:`SpanCheck` finds what to redact in one text, synchronously (Microsoft
  Presidio's pattern recognizers: :class:`PresidioCheck`), so it runs wherever the
  regexes run, streamed answers included;
* a :class:`JudgeCheck` judges whole texts, asynchronously: a served model asked
  through an OpenAI-compatible endpoint, with an explicit failure mode.

Presidio is the ``guardrails`` extra, imported only when a policy asks for it. It runs
with a no-op NLP engine: only pattern (and libphonenumber) recognizers, nothing loaded
or downloaded at run time (its e-mail and URL recognizers would fetch a suffix list,
and are not offered; the built-in ``email`` kind covers e-mail).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import weakref
from typing import Any, Protocol

import httpx

from welip.api import OpenAIError
from welip.trust._config import JudgeConfig, PresidioConfig, PresidioEntity

logger = logging.getLogger("welip.gateway")

Span = tuple[str, int, int]
"""A match: its kind, start and end."""

# Presidio's language code for the recognizers: the patterns are language-neutral.
_LANGUAGE = "xx"
# Korean road-name addresses (도로명주소): province or metropolitan city, up to two
# cities/counties/districts, a road (…로, …길, …번길) and the building number.
_KR_ADDRESS = (
    r"(?<![가-힣])[가-힣]{2,6}(?:특별시|광역시|특별자치시|특별자치도|도|시)\s+"
    r"(?:[가-힣]{1,8}(?:시|군|구)\s+){0,2}[가-힣0-9]{1,12}(?:로|길)\s?\d{1,5}(?:-\d{1,5})?"
)


class SpanCheck(Protocol):
    """Finds the spans of one text to redact (or refuse), synchronously."""

    def find(self, text: str) -> list[Span]: ...


def _recognizer(entity: PresidioEntity, config: PresidioConfig) -> Any:
    """One Presidio recognizer, by entity: a literal mapping, no registry lookup."""
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        KrRrnRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    if entity == "KR_RRN":
        return KrRrnRecognizer(supported_language=_LANGUAGE)
    if entity == "PHONE_NUMBER":
        return PhoneRecognizer(supported_language=_LANGUAGE, supported_regions=tuple(config.phone_regions))
    if entity == "CREDIT_CARD":
        return CreditCardRecognizer(supported_language=_LANGUAGE)
    if entity == "US_SSN":
        return UsSsnRecognizer(supported_language=_LANGUAGE)
    return PatternRecognizer(
        supported_entity="KR_ADDRESS",
        patterns=[Pattern("KR road-name address", _KR_ADDRESS, 0.6)],
        supported_language=_LANGUAGE,
    )


@functools.lru_cache(maxsize=16)
def _analyzer(entities: tuple[PresidioEntity, ...], config_json: str) -> Any:
    """Presidio's AnalyzerEngine: only ``entities``' recognizers, a no-op NLP engine (one per config)."""
    try:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NoOpNlpEngine
    except ImportError as exc:
        raise RuntimeError(
            "guardrails.*.presidio needs Microsoft Presidio: pip install 'welip[guardrails]'"
        ) from exc
    config = PresidioConfig.model_validate_json(config_json)
    registry = RecognizerRegistry(supported_languages=[_LANGUAGE])
    for entity in entities:
        registry.add_recognizer(_recognizer(entity, config))
    nlp = NoOpNlpEngine(models=[{"lang_code": _LANGUAGE, "model_name": "none"}])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=[_LANGUAGE])


class PresidioCheck:
    """PII spans found by Microsoft Presidio's pattern recognizers."""

    def __init__(self, config: PresidioConfig) -> None:
        self.config = config
        self.entities = list(dict.fromkeys(config.entities))
        self._engine = _analyzer(tuple(self.entities), config.model_dump_json())

    def find(self, text: str) -> list[Span]:
        results = self._engine.analyze(
            text=text,
            language=_LANGUAGE,
            entities=self.entities,
            score_threshold=self.config.score_threshold,
        )
        return [(r.entity_type.lower(), r.start, r.end) for r in results]


class JudgeUnavailable(Exception):
    """The judge gave no verdict: unreachable, too slow, or an answer that is neither SAFE nor UNSAFE."""


class JudgeCheck:
    """Asks a served model whether texts are unsafe (prompt injection, toxicity)."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        self._headers = {"authorization": f"Bearer {key}"} if key else {}
        # One connection pool per event loop (a replica has one; a test client may start several).
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def parts(self, texts: list[str]) -> list[str]:
        """The texts as the judge reads them: joined, then cut into calls of ``max_chars``."""
        whole = "\n\n".join(t for t in texts if t.strip())
        size = self.config.max_chars
        return [whole[i : i + size] for i in range(0, len(whole), size)]

    async def unsafe(self, parts: list[str]) -> bool:
        """Whether the judge finds any part unsafe; raises :class:`JudgeUnavailable` when it cannot say."""
        if not parts:
            return False
        try:
            verdicts = await asyncio.wait_for(
                asyncio.gather(*(self._ask(p) for p in parts)), timeout=self.config.timeout_s
            )
        except TimeoutError:
            raise JudgeUnavailable(f"no verdict within {self.config.timeout_s} s") from None
        except httpx.HTTPError as exc:
            raise JudgeUnavailable(f"{type(exc).__name__}: {exc}") from None
        return any(verdicts)

    async def _ask(self, text: str) -> bool:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = httpx.AsyncClient(timeout=self.config.timeout_s)
        body = {
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": self.config.instructions},
                {"role": "user", "content": text},
            ],
            "temperature": 0,
            "max_tokens": 4,
        }
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        response = await client.post(url, json=body, headers=self._headers)
        if response.status_code != 200:
            raise JudgeUnavailable(f"the judge answered HTTP {response.status_code}")
        try:
            answer = response.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeUnavailable("the judge's answer is not a chat completion") from None
        word = answer.strip().split(maxsplit=1)[0].strip(".,!:;\"'`*").upper() if answer.strip() else ""
        if word not in ("SAFE", "UNSAFE"):
            raise JudgeUnavailable(f"the judge answered {answer[:40]!r}, not SAFE or UNSAFE")
        return word == "UNSAFE"


def judge_unavailable(direction: str) -> OpenAIError:
    """503 ``guardrail_unavailable``: a fail-closed judge gave no verdict."""
    return OpenAIError(
        503,
        f"The {direction} guardrail's judge is unavailable; try again shortly.",
        type="server_error",
        code="guardrail_unavailable",
        headers={"retry-after": "5"},
    )
