"""Metric functions against values worked out by hand and the libraries' own examples."""

from __future__ import annotations

import inspect

import pytest

from welip.evaluation import (
    METRICS,
    acc,
    bleu,
    contains,
    exact_match,
    extract_number,
    json_match,
    json_schema,
    json_valid,
    numeric_match,
    regex_match,
    rouge_l,
    token_f1,
)


def test_every_metric_option_is_a_parameter_of_its_function() -> None:
    for name, metric in METRICS.items():
        params = inspect.signature(metric.fn).parameters
        keyword_only = {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
        assert set(metric.options) == keyword_only, name


def test_exact_match_options_follow_lm_eval() -> None:
    assert exact_match(" Paris ", "Paris") == 1.0
    assert exact_match("paris", "Paris") == 0.0
    assert exact_match("paris", "Paris", ignore_case=True) == 1.0
    assert exact_match("Paris.", "paris", ignore_case=True, ignore_punctuation=True) == 1.0
    assert exact_match("Answer: 42", "42", regexes_to_ignore=[r"^Answer:\s*"]) == 1.0


def test_contains_and_regex() -> None:
    assert contains("The capital is PARIS.", "Paris") == 1.0
    assert contains("The capital is PARIS.", "Paris", ignore_case=False) == 0.0
    assert contains("수도는 서울입니다", "서울") == 1.0
    assert regex_match("order #123", r"#\d+") == 1.0
    assert regex_match("order 123", "ignored", pattern=r"^order \d+$") == 1.0
    assert regex_match("none", r"\d") == 0.0


def test_token_f1_is_squad_f1() -> None:
    # Articles and punctuation are dropped before counting (SQuAD's normalize_answer).
    assert token_f1("the cat sat on the mat.", "A cat sat on mat") == 1.0
    # P = 2/2, R = 2/3 -> F1 = 0.8
    assert token_f1("Denver Broncos", "Denver Broncos defeated") == pytest.approx(0.8)
    assert token_f1("blue", "red") == 0.0
    assert token_f1("", "") == 1.0


def test_rouge_l_on_rouge_score_readme_example() -> None:
    # rouge-score's README pair. LCS = the quick brown jumps the = 5 tokens;
    # P = 5/8, R = 5/9, F = 10/17.
    value = rouge_l("The quick brown dog jumps on the log.", "The quick brown fox jumps over the lazy dog")
    assert value == pytest.approx(10 / 17)
    assert rouge_l("same words here", "same words here") == pytest.approx(1.0)


def test_bleu_uses_sacrebleu_scale() -> None:
    assert bleu("The dog bit the man.", "The dog bit the man.") == pytest.approx(100.0)
    assert bleu("xyz qrs", "The dog bit the man.") == pytest.approx(0.0, abs=1e-6)
    near = bleu("The dog bit the man today.", "The dog bit the man.")
    far = bleu("A dog saw a man.", "The dog bit the man.")
    assert 0 < far < near < 100


def test_json_metrics_read_fenced_and_wrapped_json() -> None:
    schema = '{"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}'
    assert json_valid('```json\n{"age": 3}\n```') == 1.0
    assert json_valid('Here it is: {"age": 3} Hope it helps') == 1.0
    assert json_valid("{age: 3}") == 0.0
    assert json_schema('{"age": 3}', schema) == 1.0
    assert json_schema('{"age": "3"}', schema) == 0.0
    assert json_schema("no json", schema) == 0.0
    assert json_schema('{"age": 3}', "", schema={"type": "array"}) == 0.0
    assert json_match('{"b": 1, "a": [1, 2]}', '{"a": [1, 2], "b": 1}') == 1.0
    assert json_match('{"a": 1}', '{"a": 2}') == 0.0


def test_numbers_are_extracted_with_separators_signs_and_currency() -> None:
    assert extract_number("It costs $1,234.50 in all") == 1234.5
    assert extract_number("from -3 to 7") == 7
    assert extract_number("from -3 to 7", position="first") == -3
    assert extract_number("no digits") is None
    assert numeric_match("So the answer is 40 dollars.", "40") == 1.0
    assert numeric_match("3 friends get 12 each", "12") == 1.0
    assert numeric_match("3 friends get 12 each", "12", position="first") == 0.0
    assert numeric_match("about 99.5", "100", tolerance=0.5) == 1.0
    assert numeric_match("about 99", "100", tolerance=0.5) == 0.0
    assert numeric_match("about 98", "100", tolerance=0.02, relative=True) == 1.0
    assert numeric_match("none", "1") == 0.0


def test_multiple_choice_accuracy_is_argmax_of_loglikelihoods() -> None:
    assert acc([-4.0, -1.5, -3.0], 1) == 1.0
    assert acc([-4.0, -1.5, -3.0], 0) == 0.0
    with pytest.raises(ValueError):
        acc([], 0)
