"""Rule-based metrics: plain functions of an answer and a reference.

Each text metric is ``fn(prediction, reference, **options) -> float`` and is usable
outside evaluation jobs (fine-tuning rewards reuse them, VeRL-style). Scores are in
``[0, 1]`` except ``bleu``, which keeps sacreBLEU's 0-100 scale.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
# Signed integers and decimals, with thousands separators ("1,234.5", "-3", ".5").
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def normalize(
    text: str,
    *,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    regexes_to_ignore: Sequence[str] = (),
) -> str:
    """Normalise text the way lm-evaluation-harness's ``exact_match`` options do."""
    for pattern in regexes_to_ignore:
        text = re.sub(pattern, "", text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(_PUNCT_TABLE)
    return text.strip()


def exact_match(
    prediction: str,
    reference: str,
    *,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    regexes_to_ignore: Sequence[str] = (),
) -> float:
    """1.0 when the normalised prediction equals the normalised reference."""

    def norm(text: str) -> str:
        return normalize(
            text,
            ignore_case=ignore_case,
            ignore_punctuation=ignore_punctuation,
            regexes_to_ignore=regexes_to_ignore,
        )

    return float(norm(prediction) == norm(reference))


def contains(prediction: str, reference: str, *, ignore_case: bool = True) -> float:
    """1.0 when the reference occurs in the prediction."""
    if ignore_case:
        prediction, reference = prediction.casefold(), reference.casefold()
    return float(reference.strip() in prediction)


def regex_match(prediction: str, reference: str, *, pattern: str | None = None) -> float:
    """1.0 when ``pattern`` (default: the reference itself) is found in the prediction."""
    return float(re.search(pattern if pattern is not None else reference, prediction) is not None)


def _squad_normalize(text: str) -> str:
    text = text.lower().translate(_PUNCT_TABLE)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token-overlap F1 (lower case, no punctuation or articles)."""
    pred_tokens = _squad_normalize(prediction).split()
    ref_tokens = _squad_normalize(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = Counter(pred_tokens) & Counter(ref_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=4)
def _rouge_scorer(use_stemmer: bool) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(prediction: str, reference: str, *, use_stemmer: bool = True) -> float:
    """ROUGE-L F-measure from Google's ``rouge-score``.

    Its tokenizer keeps ASCII letters and digits only: Korean text scores 0; use
    ``token_f1`` or ``contains`` there.
    """
    return float(_rouge_scorer(use_stemmer).score(reference, prediction)["rougeL"].fmeasure)


def bleu(prediction: str, reference: str, *, tokenize: str = "13a") -> float:
    """Sentence BLEU from ``sacrebleu`` (0-100); the suite reports the mean over samples."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(prediction, [reference], tokenize=tokenize).score)


def parse_json(text: str) -> Any:
    """The JSON value in ``text``, from a fenced block when there is one.

    Raises:
        ValueError: no JSON value parses.
    """
    fenced = _FENCE.search(text)
    candidate = (fenced.group(1) if fenced else text).strip()
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        # Models often wrap an object in prose: take the outermost braces.
        start, end = candidate.find("{"), candidate.rfind("}")
        if 0 <= start < end:
            try:
                return json.loads(candidate[start : end + 1])
            except json.JSONDecodeError:
                pass
    raise ValueError("no JSON value found")


def json_valid(prediction: str, reference: str = "") -> float:
    """1.0 when the prediction holds a JSON value (see :func:`parse_json`)."""
    try:
        parse_json(prediction)
    except ValueError:
        return 0.0
    return 1.0


def json_schema(prediction: str, reference: str, *, schema: dict[str, Any] | None = None) -> float:
    """1.0 when the prediction's JSON conforms to ``schema`` (default: the reference, as JSON)."""
    try:
        value = parse_json(prediction)
    except ValueError:
        return 0.0
    spec = schema if schema is not None else json.loads(reference)
    return float(jsonschema.Draft202012Validator(spec).is_valid(value))


def json_match(prediction: str, reference: str) -> float:
    """1.0 when the prediction's JSON equals the reference's JSON (order of keys aside)."""
    try:
        return float(parse_json(prediction) == json.loads(reference))
    except ValueError:
        return 0.0


def extract_number(text: str, *, position: str = "last") -> float | None:
    """The first or last number written in ``text`` ("1,234.5", "-3", "$40"), or None."""
    numbers = [m.group(0) for m in _NUMBER.finditer(text) if any(c.isdigit() for c in m.group(0))]
    if not numbers:
        return None
    return float((numbers[-1] if position == "last" else numbers[0]).replace(",", ""))


def numeric_match(
    prediction: str,
    reference: str,
    *,
    tolerance: float = 0.0,
    relative: bool = False,
    position: str = "last",
) -> float:
    """1.0 when the number in the prediction is within ``tolerance`` of the reference's.

    Args:
        prediction: Model answer; its ``position`` ("first" or "last") number counts.
        reference: Text holding the expected number.
        tolerance: Allowed absolute difference, or relative when ``relative``.
        relative: Compare ``|a - b| / |b|`` with ``tolerance``.
        position: Which number of the prediction to take.
    """
    if position not in ("first", "last"):
        raise ValueError("position must be 'first' or 'last'")
    got, want = extract_number(prediction, position=position), extract_number(reference)
    if got is None or want is None:
        return 0.0
    diff = abs(got - want)
    if relative:
        return float(diff <= tolerance * abs(want) if want else diff <= tolerance)
    return float(diff <= tolerance or math.isclose(got, want))


def acc(choice_loglikelihoods: Sequence[float], gold: int) -> float:
    """Multiple-choice accuracy: 1.0 when the gold choice has the highest log-likelihood."""
    if not choice_loglikelihoods:
        raise ValueError("no choices")
    best = max(range(len(choice_loglikelihoods)), key=lambda i: choice_loglikelihoods[i])
    return float(best == gold)


@dataclass(frozen=True)
class Metric:
    """A metric function and the options it accepts (checked when a suite validates)."""

    fn: Callable[..., float]
    options: tuple[str, ...] = ()


# Literal on purpose (house style: no registries); a unit test checks each entry's
# options against its function's signature.
METRICS: dict[str, Metric] = {
    "exact_match": Metric(exact_match, ("ignore_case", "ignore_punctuation", "regexes_to_ignore")),
    "contains": Metric(contains, ("ignore_case",)),
    "regex_match": Metric(regex_match, ("pattern",)),
    "token_f1": Metric(token_f1),
    "rouge_l": Metric(rouge_l, ("use_stemmer",)),
    "bleu": Metric(bleu, ("tokenize",)),
    "json_valid": Metric(json_valid),
    "json_schema": Metric(json_schema, ("schema",)),
    "json_match": Metric(json_match),
    "numeric_match": Metric(numeric_match, ("tolerance", "relative", "position")),
    "acc": Metric(acc),
}
