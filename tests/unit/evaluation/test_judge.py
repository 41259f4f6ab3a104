"""Judges: the answer's shape, parsing (failures kept), pairwise position swap."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema

from welip.evaluation import JudgeConfig, pairwise_score, parse_feedback, result_schema
from welip.evaluation._client import RequestFailed
from welip.evaluation._judge import run_judge

TARGET = {"model": "judge"}


def judge(**changes: Any) -> JudgeConfig:
    base: dict[str, Any] = {
        "instructions": "Q {{ inputs }} A {{ outputs }} R {{ expectations }}",
        "target": TARGET,
    }
    base.update(changes)
    return JudgeConfig.model_validate(base)


def test_schema_matches_each_feedback_type() -> None:
    cases = [
        (judge(), {"result": True, "rationale": "ok"}, {"result": "yes", "rationale": "ok"}),
        (
            judge(feedback_type="int", scale_min=1, scale_max=5),
            {"result": 4, "rationale": ""},
            {"result": 6, "rationale": ""},
        ),
        (
            judge(feedback_type="category", categories={"good": 1.0, "bad": 0.0}),
            {"result": "good", "rationale": ""},
            {"result": "meh", "rationale": ""},
        ),
    ]
    for cfg, valid, invalid in cases:
        validator = jsonschema.Draft202012Validator(result_schema(cfg))
        assert validator.is_valid(valid) and not validator.is_valid(invalid)


def test_parse_feedback_scores_and_keeps_failures() -> None:
    assert parse_feedback(judge(), '{"result": true, "rationale": "right"}').value == 1.0
    assert parse_feedback(judge(), '```json\n{"result": "no", "rationale": "x"}\n```').value == 0.0
    scale = judge(feedback_type="int", scale_min=1, scale_max=5)
    assert parse_feedback(scale, '{"result": 4, "rationale": "good"}').value == 4.0
    assert parse_feedback(scale, '{"result": "3", "rationale": ""}').value == 3.0
    out_of_scale = parse_feedback(scale, '{"result": 9, "rationale": ""}')
    assert out_of_scale.value is None and "outside the scale" in (out_of_scale.error or "")
    truncated = parse_feedback(scale, '{"result": 4, "rationale": "it goes on and o')
    assert truncated.value is None and truncated.error and truncated.error.startswith("not JSON")
    cats = judge(feedback_type="category", categories={"good": 1.0, "partly": 0.5, "bad": 0.0})
    assert parse_feedback(cats, '{"result": "partly", "rationale": ""}').value == 0.5
    assert parse_feedback(cats, '{"result": "great", "rationale": ""}').value is None


def test_pairwise_score_needs_the_same_winner_in_both_orders() -> None:
    assert pairwise_score("A", "B") == 1.0  # answer first, then second: wins both
    assert pairwise_score("B", "A") == 0.0
    assert pairwise_score("A", "A") == 0.5  # follows the position, not the content
    assert pairwise_score("tie", "tie") == 0.5


class ScriptedEndpoint:
    """Answers judge requests from a script and records the prompts it saw."""

    def __init__(self, answers: list[str], refuse_schema: bool = False) -> None:
        self.answers, self.prompts, self.bodies = list(answers), [], []
        self.refuse_schema, self.structured_output = refuse_schema, True

    async def post(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        self.bodies.append(dict(body))
        if self.refuse_schema and "response_format" in body:
            raise RequestFailed("400: invalid_request_error: response_format is not supported", 400)
        self.prompts.append(body["messages"][0]["content"])
        return {"choices": [{"message": {"content": self.answers.pop(0)}}]}, 1.0


def test_pairwise_judge_swaps_positions() -> None:
    cfg = judge(
        instructions="A: {{ output_a }}\nB: {{ output_b }}",
        pairwise=True,
        feedback_type="category",
        baseline="{{ ref }}",
    )
    endpoint = ScriptedEndpoint(['{"result": "A", "rationale": "1"}', '{"result": "B", "rationale": "2"}'])
    verdict = asyncio.run(
        run_judge(cfg, endpoint, inputs="q", outputs="mine", expectations="", baseline="theirs")  # type: ignore[arg-type]
    )
    assert endpoint.prompts[0].startswith("A: mine\nB: theirs") and endpoint.prompts[1].startswith(
        "A: theirs\nB: mine"
    )
    assert verdict["value"] == 1.0 and verdict["position_consistent"] is True
    schema = endpoint.bodies[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["result"]["enum"] == ["A", "B", "tie"]


def test_unparsable_judge_answer_is_a_counted_failure_with_its_raw_text() -> None:
    endpoint = ScriptedEndpoint(["I think it is fine"])
    cfg = judge(structured_output=False)
    verdict = asyncio.run(run_judge(cfg, endpoint, inputs="q", outputs="a", expectations="r", baseline=None))  # type: ignore[arg-type]
    assert verdict["value"] is None and verdict["failure"] == "parse"
    assert verdict["raw"] == "I think it is fine"
    assert "response_format" not in endpoint.bodies[0]
    assert json.loads(json.dumps(verdict))  # stored as JSON in samples.jsonl


def test_an_engine_without_guided_decoding_is_asked_in_plain_json_from_then_on() -> None:
    endpoint = ScriptedEndpoint(['{"result": true, "rationale": "ok"}'] * 2, refuse_schema=True)
    cfg = judge()

    async def twice() -> list[dict[str, Any]]:
        return [
            await run_judge(cfg, endpoint, inputs="q", outputs="a", expectations="r", baseline=None)  # type: ignore[arg-type]
            for _ in range(2)
        ]

    verdicts = asyncio.run(twice())
    assert [v["value"] for v in verdicts] == [1.0, 1.0]
    assert ["response_format" in b for b in endpoint.bodies] == [True, False, False]
