"""Paired comparisons of two methods run on the same (concept, seed) units: the mean
difference, a bootstrap 95% confidence interval of it, and an exact two-sided sign test.

The methods benchmark (scripts/bench_methods.py) compares every guided method with the
baseline on the same data and seeds, so differences are taken per unit, never between means
of unrelated runs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Paired:
    """The summary of per-unit differences (method minus baseline)."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    above: int
    """Units where the method is higher than the baseline."""
    below: int
    """Units where it is lower (ties count in neither)."""
    sign_p: float
    """Exact two-sided sign test p-value, ties dropped (1.0 when every unit ties)."""


def sign_test(above: int, below: int) -> float:
    """Two-sided exact binomial p-value of ``above`` successes in ``above + below`` fair coin flips."""
    n = above + below
    if n == 0:
        return 1.0
    k = min(above, below)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_ci(
    values: Sequence[float], *, level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement)."""
    if not values:
        return math.nan, math.nan
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    low = means[int(math.floor(tail * (resamples - 1)))]
    high = means[int(math.ceil((1 - tail) * (resamples - 1)))]
    return low, high


def compare(method: dict[tuple, float], baseline: dict[tuple, float], *, seed: int = 0) -> Paired:
    """Paired summary over the units both dicts have (unit -> value); NaN values are left out."""
    units = sorted(u for u in method.keys() & baseline.keys() if not (math.isnan(method[u]) or math.isnan(baseline[u])))
    diffs = [method[u] - baseline[u] for u in units]
    above = sum(d > 0 for d in diffs)
    below = sum(d < 0 for d in diffs)
    low, high = bootstrap_ci(diffs, seed=seed)
    mean = sum(diffs) / len(diffs) if diffs else math.nan
    return Paired(len(diffs), mean, low, high, above, below, sign_test(above, below))
