"""Rewards from evaluation metrics: VeRL's ``compute_score`` and TRL's reward function."""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from welip.evaluation import METRICS
from welip.training import AlignConfig, compute_score, reward_function, verl_config
from welip.training._rewards import completion_text, plain, reference_text
from welip.training._verl import VERL_REWARD_NAME, VERL_REWARD_PATH

REWARDS_FILE = Path(__file__).resolve().parents[3] / "welip" / "training" / "_rewards.py"


def align(**changes: Any) -> AlignConfig:
    base: dict[str, Any] = {
        "name": "t",
        "model": "m",
        "base_model_id": "b",
        "dataset": "d.jsonl",
        "rl_backend": "verl",
        "use_gpu": True,
    }
    return AlignConfig.model_validate({**base, **changes})


@pytest.mark.parametrize(
    ("answer", "truth", "expected"),
    [
        ("The answer is 42.", "42", 1.0),
        ("42", 42, 1.0),  # a numeric ground truth from JSON
        ("17 + 25 = 41", "42", 0.0),
        ("I do not know", "42", 0.0),
        ("1,234", "1234", 1.0),
    ],
)
def test_compute_score_defaults_to_numeric_match(answer: str, truth: Any, expected: float) -> None:
    assert compute_score("welip/arithmetic", answer, truth) == expected


def test_compute_score_passes_the_metric_options() -> None:
    assert compute_score("s", "41", "42", None, "numeric_match", tolerance=1) == 1.0
    assert compute_score("s", "41", "42", None, "numeric_match", tolerance=0) == 0.0
    assert compute_score("s", "Paris", "paris", None, "exact_match", ignore_case=True) == 1.0
    assert compute_score("s", "Paris", "paris", None, "exact_match") == 0.0
    assert compute_score("s", "the capital is Paris", "paris", {"index": 3}, "contains") == 1.0


def test_compute_score_compares_structured_truth_as_json() -> None:
    assert compute_score("s", 'sure: {"b": 2, "a": 1}', {"a": 1, "b": 2}, None, "json_match") == 1.0
    assert compute_score("s", '{"a": 1}', {"a": 2}, None, "json_match") == 0.0


def test_a_pair_the_metric_cannot_score_earns_zero_instead_of_stopping_the_run() -> None:
    # json_schema with the reference as the schema: a reference that is not JSON raises in the metric.
    assert compute_score("s", "{}", "not json", None, "json_schema") == 0.0


@pytest.mark.parametrize(("metric", "message"), [("nope", "unknown reward metric"), ("acc", "logprobs")])
def test_unknown_or_non_text_metrics_are_refused(metric: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_score("s", "1", "1", None, metric)
    with pytest.raises(ValueError, match=message):
        reward_function(metric)


def test_every_text_metric_is_a_reward() -> None:
    # Kept in sync with METRICS: a new text metric is usable as a reward without changes here.
    for name in set(METRICS) - {"acc"}:
        reward = reward_function(name)
        assert reward.__name__ == name
        scores = reward(["an answer"], ["an answer"])
        assert len(scores) == 1 and isinstance(scores[0], float)


def test_reward_function_scores_chat_completions_with_trl_columns() -> None:
    reward = reward_function("numeric_match", {"tolerance": 0})
    completions = [
        [{"role": "assistant", "content": "It is 42."}],
        [{"role": "assistant", "content": "41"}],
        [{"role": "assistant", "content": "no idea"}],
    ]
    scores = reward(
        completions=completions,
        ground_truth=["42", "42", "42"],
        prompts=[[{"role": "user", "content": "What is 17 + 25?"}]] * 3,
        completion_ids=[[1], [2], [3]],
        data_source=["welip/arithmetic"] * 3,
        trainer_state=object(),
        log_extra=lambda *a: None,
        log_metric=lambda *a: None,
    )
    assert scores == [1.0, 0.0, 0.0]


def test_reward_function_scores_plain_string_completions() -> None:
    reward = reward_function("exact_match", {"ignore_case": True})
    assert reward(["Seoul", "Busan"], ["seoul", "seoul"]) == [1.0, 0.0]


def test_reward_function_refuses_mismatched_columns() -> None:
    with pytest.raises(ValueError):
        reward_function("contains")(["a", "b"], ["a"])


@pytest.mark.parametrize(
    ("completion", "text"),
    [
        ("plain", "plain"),
        ([{"role": "assistant", "content": "last"}], "last"),
        ([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}], "b"),
        ({"role": "assistant", "content": None}, ""),
        ([], ""),
    ],
)
def test_completion_text(completion: Any, text: str) -> None:
    assert completion_text(completion) == text


def test_reference_text_keeps_strings_and_writes_the_rest_as_json() -> None:
    assert reference_text("42") == "42"
    assert reference_text(42) == "42"
    assert json.loads(reference_text({"a": [1, 2]})) == {"a": [1, 2]}


class _FakeDictConfig(Mapping[str, Any]):
    """Stands in for OmegaConf's DictConfig (a Mapping that is not a dict)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_plain_turns_config_containers_into_dicts_and_lists() -> None:
    value = _FakeDictConfig({"schema": _FakeDictConfig({"required": ("a",)}), "s": "text"})
    assert plain(value) == {"schema": {"required": ["a"]}, "s": "text"}


def _call_with_kwargs(raw_fn: Any, extra_kwargs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    # verl/trainer/ppo/reward.py: the custom function is wrapped with its reward_kwargs.
    return raw_fn(*args, **{**kwargs, **extra_kwargs})


def test_verl_loads_compute_score_by_module_name_with_the_configs_reward_kwargs() -> None:
    overrides = verl_config(align(reward_metric="numeric_match", reward_kwargs={"tolerance": 1}))
    assert overrides["custom_reward_function.path"] == VERL_REWARD_PATH
    assert overrides["custom_reward_function.name"] == VERL_REWARD_NAME
    # VeRL's load_module: "pkg://a.b.c" imports a.b.c.
    module = importlib.import_module(VERL_REWARD_PATH.removeprefix("pkg://").replace("/", "."))
    fn = partial(
        _call_with_kwargs,
        getattr(module, overrides["custom_reward_function.name"]),
        overrides["custom_reward_function.reward_kwargs"],
    )
    # VeRL's naive reward manager calls it with keywords.
    score = fn(data_source="welip/arithmetic", solution_str="41", ground_truth="42", extra_info={"index": 0})
    assert score == 1.0


def test_the_reward_module_also_loads_as_a_file() -> None:
    # VeRL's other form: custom_reward_function.path=/path/to/_rewards.py
    spec = importlib.util.spec_from_file_location("custom_module_rewards", REWARDS_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.compute_score("s", "The sum is 7", "7", None, metric="numeric_match") == 1.0
