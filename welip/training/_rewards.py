"""Rewards made of evaluation metrics: ``reward = metric(answer, ground truth)``.

Two shapes of the same thing: :func:`compute_score` is VeRL's custom reward function
(``compute_score(data_source, solution_str, ground_truth, extra_info)``, the metric and
its options arriving as ``custom_reward_function.reward_kwargs``), and
:func:`reward_function` builds the callable TRL's ``GRPOTrainer`` takes.

VeRL imports this module by name in its reward workers, so it imports nothing heavier
than the metric functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from welip.evaluation import METRICS

RewardFunction = Callable[..., list[float]]


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    metric: str = "numeric_match",
    **options: Any,
) -> float:
    """VeRL's reward: ``metric`` of the model's answer against the ground truth.

    Args:
        data_source: The row's ``data_source`` (every source is scored by the same metric).
        solution_str: The decoded completion.
        ground_truth: The row's ``reward_model.ground_truth``; not a string: its JSON.
        extra_info: The row's ``extra_info`` (unused).
        metric: A name in :data:`welip.evaluation.METRICS` (``AlignConfig.reward_metric``).
        **options: The metric's options (``AlignConfig.reward_kwargs``).

    Returns:
        The score; 0.0 when the metric cannot score the pair (e.g. a reference that is
        not valid JSON), so a broken row never stops a run.
    """
    fn = _metric_fn(metric)
    try:
        return float(fn(solution_str, reference_text(ground_truth), **plain(options)))
    except (ValueError, TypeError):
        return 0.0


def reward_function(metric: str, options: Mapping[str, Any] | None = None) -> RewardFunction:
    """A TRL reward function scoring completions with ``metric`` against ``ground_truth``.

    The returned ``reward(completions, ground_truth, **kwargs) -> list[float]`` takes
    chat completions (lists of message dicts; the last message is the answer) or plain
    strings; ``data_source`` and the other dataset columns arrive in ``kwargs``. Its
    ``__name__`` is the metric's, which TRL logs as ``rewards/<metric>/mean``.

    Raises:
        ValueError: ``metric`` is unknown or not a text metric.
    """
    _metric_fn(metric)
    kwargs = dict(options or {})

    def reward(completions: Sequence[Any], ground_truth: Sequence[Any], **columns: Any) -> list[float]:
        sources = columns.get("data_source") or [""] * len(completions)
        return [
            compute_score(source, completion_text(completion), truth, None, metric, **kwargs)
            for completion, truth, source in zip(completions, ground_truth, sources, strict=True)
        ]

    reward.__name__ = metric
    reward.__qualname__ = metric
    return reward


def completion_text(completion: Any) -> str:
    """The answer in a completion: the string, or the last message's ``content``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content") or "")
    if isinstance(completion, Sequence) and completion:
        return completion_text(completion[-1])
    return ""


def reference_text(ground_truth: Any) -> str:
    """The ground truth as the metric's reference: strings as they are, anything else as JSON."""
    if isinstance(ground_truth, str):
        return ground_truth
    import json

    return json.dumps(plain(ground_truth), ensure_ascii=False)


def plain(value: Any) -> Any:
    """``value`` with mappings and sequences turned into dicts and lists (OmegaConf's included)."""
    # OmegaConf's DictConfig and ListConfig are a MutableMapping and a MutableSequence.
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


def _metric_fn(metric: str) -> Callable[..., float]:
    spec = METRICS.get(metric)
    if spec is None:
        raise ValueError(f"unknown reward metric {metric!r}; known: {', '.join(sorted(METRICS))}")
    if metric == "acc":
        raise ValueError("acc scores multiple-choice logprobs, not an answer")
    return spec.fn
