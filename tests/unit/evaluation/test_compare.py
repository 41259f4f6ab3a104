"""Paired comparison of two runs."""

from __future__ import annotations

import pytest

from welip.evaluation import compare_samples, comparison_table


def run(scores: list[float | None], metric: str = "em") -> list[dict]:
    return [{"id": f"s{i}", "scores": {metric: v}} for i, v in enumerate(scores)]


def test_difference_interval_and_wins_are_paired_by_id() -> None:
    a = run([0, 0, 1, 1, 0, 1, 0, 0, 1, 0])
    b = run([1, 0, 1, 1, 1, 1, 0, 1, 0, 0])
    b.reverse()  # order does not matter, ids do
    (row,) = compare_samples(a, b, resamples=4000, seed=1)
    assert (row.n, row.wins, row.losses, row.ties) == (10, 3, 1, 6)
    assert (
        row.diff == pytest.approx(0.2)
        and row.mean_a == pytest.approx(0.4)
        and row.mean_b == pytest.approx(0.6)
    )
    assert row.ci_low <= row.diff <= row.ci_high
    # Normal approximation: 0.2 ± 1.96 * 0.6 / sqrt(10) = [-0.17, 0.57]; the bootstrap is discrete.
    assert -0.3 <= row.ci_low < 0 and 0.4 < row.ci_high <= 0.6
    assert compare_samples(a, b, resamples=4000, seed=1) == [row]  # seeded: reproducible
    assert "+0.2000" in comparison_table([row])


def test_unscored_samples_and_missing_ids_are_left_out() -> None:
    a = run([1, None, 0])
    b = run([1, 1, 1, 1])
    (row,) = compare_samples(a, b)
    assert row.n == 2 and row.wins == 1 and row.ties == 1
    assert compare_samples(run([1]), run([1], metric="other")) == []
    same = compare_samples(a, a)[0]
    assert same.diff == 0 and same.ci_low == 0 and same.ci_high == 0
