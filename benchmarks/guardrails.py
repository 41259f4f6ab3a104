"""Cost per request of the guardrail checks: the built-in regexes vs Presidio vs a (mocked) judge.

Times the trust layer's admission of chat requests (``Trust.admit``: parse, input
guardrails, nothing else configured) in one process, for each guardrail setting on
the same representative prompts, rounds interleaved so drift hits every setting alike.
Reports the median microseconds per request and the ratio to the regex guard in the
same run. The judge's endpoint is mocked (it answers SAFE at once): its figure is
WeLIP's own overhead around the call, not the model's time, which depends on the
served judge.

    .venv/bin/python benchmarks/guardrails.py                 # 3 rounds x 30 requests per prompt
    .venv/bin/python benchmarks/guardrails.py --rounds 3 --requests 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from welip.api import parse_chat
from welip.trust import RequestContext, Trust, TrustConfig
from welip.trust._auth import OPEN
from welip.trust._checks import JudgeCheck

_QUESTION = "What is the difference between a LoRA adapter and a full fine-tune, in two sentences?"
_PII = (
    "안녕하세요, 홍길동입니다. 주민등록번호는 900101-1234567이고 전화번호는 010-1234-5678, "
    "주소는 서울특별시 강남구 테헤란로 123입니다. 카드 4111 1111 1111 1111로 결제해 주세요. "
    "Please also e-mail hong.gildong@example.co.kr with the invoice for order 12345."
)
_DOC = " ".join(
    f"Section {i}: the gateway admits a request after authentication, rate limiting and guardrails; "
    f"version 1.{i}.3 shipped on 2026-0{1 + i % 9}-1{i % 10} with {i * 17} fixes."
    for i in range(60)
)
PROMPTS = {"question (90 chars)": _QUESTION, "pii (260 chars)": _PII, "rag context (7 kB)": _DOC}

_REGEX = {"pii": ["email", "phone", "credit_card", "kr_rrn"]}
_PRESIDIO = {"presidio": {"entities": ["KR_RRN", "PHONE_NUMBER", "CREDIT_CARD", "KR_ADDRESS"]}}
_JUDGE = {"judge": {"model": "judge", "base_url": "http://judge.invalid/v1"}}
SETTINGS: dict[str, dict[str, Any]] = {
    "off": {},
    "regex": _REGEX,
    "presidio": _PRESIDIO,
    "regex+presidio": {**_REGEX, **_PRESIDIO},
    "regex+judge (mocked)": {**_REGEX, **_JUDGE},
}


async def _safe(self: JudgeCheck, text: str) -> bool:
    return False  # the mocked judge: SAFE at once


def _trust(policy: dict[str, Any]) -> Trust:
    return Trust(TrustConfig(guardrails={"input": policy}), database=None, redis=None)


async def _time(trust: Trust, raw: bytes, requests: int) -> float:
    """Median microseconds of one admission of ``raw``."""
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        ctx = RequestContext(method="POST", route="/v1/chat/completions", request_id="r", principal=OPEN)
        await trust.admit(ctx, parse_chat(raw), raw)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


async def main(rounds: int, requests: int) -> dict[str, dict[str, float]]:
    JudgeCheck._ask = _safe  # type: ignore[method-assign]
    trusts = {name: _trust(policy) for name, policy in SETTINGS.items()}
    bodies = {
        name: json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
        for name, text in PROMPTS.items()
    }
    for trust in trusts.values():  # warm-up: Presidio's recognizers load lazily
        for raw in bodies.values():
            await _time(trust, raw, 3)
    runs: dict[str, dict[str, list[float]]] = {p: {s: [] for s in SETTINGS} for p in PROMPTS}
    for _ in range(rounds):
        for prompt, raw in bodies.items():
            for setting, trust in trusts.items():
                runs[prompt][setting].append(await _time(trust, raw, requests))
    return {p: {s: statistics.median(v) for s, v in by.items()} for p, by in runs.items()}


def _report(results: dict[str, dict[str, float]]) -> str:
    lines = ["| prompt | " + " | ".join(SETTINGS) + " |", "| --- |" + " ---: |" * len(SETTINGS)]
    for prompt, by in results.items():
        regex = by["regex"]
        cells = [f"{us:,.0f} µs ({us / regex:.2f}x)" for us in by.values()]
        lines.append(f"| {prompt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (median of them).")
    parser.add_argument("--requests", type=int, default=30, help="Requests per prompt, setting and round.")
    args = parser.parse_args()
    print(_report(asyncio.run(main(args.rounds, args.requests))))
    print("median per request; (x) = ratio to the regex guard in this run")
