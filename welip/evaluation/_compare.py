"""Paired comparison of two evaluation runs: difference, bootstrap interval, wins and losses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from welip.evaluation._results import text_table


@dataclass(frozen=True)
class MetricComparison:
    """Run B against run A on one metric, over the samples both runs scored.

    ``diff`` is mean(B) - mean(A); ``ci_low``/``ci_high`` its paired bootstrap
    interval; ``wins`` counts samples where B scored higher, ``losses`` lower.
    """

    metric: str
    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    ties: int


def compare_samples(
    samples_a: list[dict[str, Any]],
    samples_b: list[dict[str, Any]],
    *,
    metrics: list[str] | None = None,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[MetricComparison]:
    """Compare two runs' per-sample scores, paired by sample id.

    Args:
        samples_a: Records of run A (``samples.jsonl``).
        samples_b: Records of run B.
        metrics: Metrics to compare; default those both runs have.
        resamples: Bootstrap resamples.
        confidence: Interval coverage.
        seed: Bootstrap seed (the same inputs give the same interval).
    """
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    a = {s["id"]: s.get("scores") or {} for s in samples_a}
    b = {s["id"]: s.get("scores") or {} for s in samples_b}
    common_ids = sorted(a.keys() & b.keys())
    names = metrics or sorted({k for s in a.values() for k in s} & {k for s in b.values() for k in s})
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        pairs = [
            (a[i][name], b[i][name])
            for i in common_ids
            if a[i].get(name) is not None and b[i].get(name) is not None
        ]
        if not pairs:
            continue
        values = np.array(pairs, dtype=float)
        deltas = values[:, 1] - values[:, 0]
        index = rng.integers(0, len(deltas), size=(resamples, len(deltas)))
        boot = deltas[index].mean(axis=1)
        tail = (1 - confidence) / 2 * 100
        out.append(
            MetricComparison(
                metric=name,
                n=len(deltas),
                mean_a=float(values[:, 0].mean()),
                mean_b=float(values[:, 1].mean()),
                diff=float(deltas.mean()),
                ci_low=float(np.percentile(boot, tail)),
                ci_high=float(np.percentile(boot, 100 - tail)),
                wins=int((deltas > 0).sum()),
                losses=int((deltas < 0).sum()),
                ties=int((deltas == 0).sum()),
            )
        )
    return out


def comparison_table(rows: list[MetricComparison], confidence: float = 0.95) -> str:
    """The comparison as a plain text table."""
    header = ("metric", "n", "A", "B", "B-A", f"{confidence:.0%} CI", "wins", "losses", "ties")
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        lines.append(
            (
                r.metric,
                str(r.n),
                f"{r.mean_a:.4f}",
                f"{r.mean_b:.4f}",
                f"{r.diff:+.4f}",
                f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]",
                str(r.wins),
                str(r.losses),
                str(r.ties),
            )
        )
    return text_table(lines)
