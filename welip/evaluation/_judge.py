"""LLM-as-a-judge, shaped like MLflow's ``make_judge``.

A judge renders its instructions over ``inputs``, ``outputs`` and ``expectations``,
asks any OpenAI-compatible model for ``{"result": ..., "rationale": ...}`` (forced
into that shape by a JSON schema where the engine supports guided decoding) and turns
the result into a score. An answer that does not parse is a parse failure: counted and
reported as its own metric, never dropped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from welip.evaluation._client import Endpoint, RequestFailed
from welip.evaluation._config import JudgeConfig
from welip.evaluation._metrics import parse_json
from welip.evaluation._prompts import render

logger = logging.getLogger(__name__)
PAIRWISE_VERDICTS = ("A", "B", "tie")
# Bounded so a guided answer closes its JSON within max_tokens (small judges ramble).
RATIONALE_MAX_CHARS = 400


@dataclass(frozen=True)
class Feedback:
    """One judgement: the score, the raw result, the rationale, or why it failed."""

    value: float | None
    result: Any = None
    rationale: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def result_schema(judge: JudgeConfig) -> dict[str, Any]:
    """The JSON schema of the judge's answer."""
    result: dict[str, Any]
    if judge.pairwise:
        result = {"type": "string", "enum": list(PAIRWISE_VERDICTS)}
    elif judge.feedback_type == "bool":
        result = {"type": "boolean"}
    elif judge.feedback_type == "int":
        result = {"type": "integer", "minimum": judge.scale_min, "maximum": judge.scale_max}
    else:
        result = {"type": "string", "enum": list(judge.categories)}
    return {
        "type": "object",
        "properties": {"result": result, "rationale": {"type": "string", "maxLength": RATIONALE_MAX_CHARS}},
        "required": ["result", "rationale"],
        "additionalProperties": False,
    }


def _answer_format(judge: JudgeConfig) -> str:
    if judge.pairwise:
        shape = '"A", "B" or "tie"'
    elif judge.feedback_type == "bool":
        shape = "true or false"
    elif judge.feedback_type == "int":
        shape = f"an integer from {judge.scale_min} to {judge.scale_max}"
    else:
        shape = " or ".join(json.dumps(c) for c in judge.categories)
    return (
        "\n\nAnswer with only a JSON object of this form: "
        f'{{"result": <{shape}>, "rationale": "<one or two sentences>"}}'
    )


def judge_prompt(judge: JudgeConfig, variables: dict[str, Any]) -> str:
    """The judge's instructions rendered over ``variables``, with the answer format appended."""
    return render(judge.instructions, variables) + _answer_format(judge)


def parse_feedback(judge: JudgeConfig, text: str) -> Feedback:
    """Turn the judge's answer into a :class:`Feedback` (``value`` None on a parse failure)."""
    try:
        answer = parse_json(text)
    except ValueError:
        return Feedback(None, error=f"not JSON: {text[:200]!r}")
    if not isinstance(answer, dict) or "result" not in answer:
        return Feedback(None, error=f"no `result` in {text[:200]!r}")
    result, rationale = answer["result"], answer.get("rationale")
    rationale = str(rationale) if rationale is not None else None
    if judge.pairwise:
        if result not in PAIRWISE_VERDICTS:
            return Feedback(None, result, rationale, f"verdict {result!r} is not A, B or tie")
        return Feedback(None, result, rationale)  # scored once both orders are in
    if judge.feedback_type == "bool":
        if isinstance(result, str) and result.strip().lower() in ("true", "yes", "false", "no"):
            result = result.strip().lower() in ("true", "yes")
        if not isinstance(result, bool):
            return Feedback(None, result, rationale, f"result {result!r} is not a boolean")
        return Feedback(float(result), result, rationale)
    if judge.feedback_type == "int":
        if isinstance(result, str) and result.strip().lstrip("-").isdigit():
            result = int(result)
        if not isinstance(result, int) or isinstance(result, bool):
            return Feedback(None, result, rationale, f"result {result!r} is not an integer")
        if not judge.scale_min <= result <= judge.scale_max:
            return Feedback(None, result, rationale, f"result {result} is outside the scale")
        return Feedback(float(result), result, rationale)
    if result not in judge.categories:
        return Feedback(
            None, result, rationale, f"category {result!r} is not one of {list(judge.categories)}"
        )
    return Feedback(judge.categories[result], result, rationale)


def pairwise_score(first: str, second: str) -> float:
    """Score of the answer under test from two verdicts with positions swapped.

    ``first`` judged (A = answer, B = baseline), ``second`` (A = baseline, B = answer):
    a win in both orders is 1, a loss in both 0, anything else (a tie, or a verdict that
    follows the position rather than the content) 0.5.
    """
    if first == "A" and second == "B":
        return 1.0
    if first == "B" and second == "A":
        return 0.0
    return 0.5


async def _ask(judge: JudgeConfig, endpoint: Endpoint, prompt: str) -> tuple[Feedback, str]:
    body: dict[str, Any] = {
        "model": judge.target.model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": judge.max_tokens,
    }
    if judge.structured_output and endpoint.structured_output:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "judgement", "schema": result_schema(judge), "strict": True},
        }
    try:
        answer, _ = await endpoint.post("chat/completions", body)
    except RequestFailed as exc:
        if "response_format" not in body or exc.status != 400 or "response_format" not in str(exc):
            raise
        # The judge's engine has no guided decoding: ask for the same JSON in words from
        # now on; answers that do not parse are counted as parse failures.
        logger.warning("judge %s refuses response_format (%s); asking without it", judge.target.model, exc)
        endpoint.structured_output = False
        del body["response_format"]
        answer, _ = await endpoint.post("chat/completions", body)
    text = answer["choices"][0]["message"].get("content") or ""
    return parse_feedback(judge, text), text


async def run_judge(
    judge: JudgeConfig,
    endpoint: Endpoint,
    *,
    inputs: str,
    outputs: str,
    expectations: str,
    baseline: str | None,
) -> dict[str, Any]:
    """Judge one sample; a request that fails for good is recorded like a parse failure."""
    variables = {"inputs": inputs, "expectations": expectations}
    try:
        if not judge.pairwise:
            feedback, raw = await _ask(
                judge, endpoint, judge_prompt(judge, {**variables, "outputs": outputs})
            )
            return {**feedback.as_dict(), "failure": "parse" if feedback.error else None, "raw": raw}
        first, raw_first = await _ask(
            judge, endpoint, judge_prompt(judge, {**variables, "output_a": outputs, "output_b": baseline})
        )
        second, raw_second = await _ask(
            judge, endpoint, judge_prompt(judge, {**variables, "output_a": baseline, "output_b": outputs})
        )
    except RequestFailed as exc:
        return {"value": None, "result": None, "rationale": None, "error": str(exc), "failure": "request"}
    error = first.error or second.error
    value = None if error else pairwise_score(first.result, second.result)
    return {
        "value": value,
        "result": [first.result, second.result],
        "rationale": [first.rationale, second.rationale],
        "error": error,
        "failure": "parse" if error else None,
        "position_consistent": None
        if error
        else (first.result, second.result) in (("A", "B"), ("B", "A"), ("tie", "tie")),
        "raw": [raw_first, raw_second],
    }
