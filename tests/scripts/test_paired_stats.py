"""The benchmark's paired statistics: exact sign test, bootstrap interval, matching by unit."""

from __future__ import annotations

import math

import pytest

from benchmarks.paired import bootstrap_ci, compare, sign_test


def test_sign_test_is_the_exact_binomial():
    assert sign_test(9, 0) == pytest.approx(2 / 512)
    assert sign_test(0, 9) == pytest.approx(2 / 512)
    assert sign_test(8, 1) == pytest.approx(2 * 10 / 512)
    assert sign_test(5, 4) == 1.0
    assert sign_test(0, 0) == 1.0


def test_bootstrap_interval_brackets_the_mean_and_shrinks_to_a_constant():
    assert bootstrap_ci([0.3] * 9) == pytest.approx((0.3, 0.3))
    values = [0.1, 0.2, 0.15, 0.05, 0.12, 0.3, 0.08, 0.11, 0.09]
    low, high = bootstrap_ci(values)
    mean = sum(values) / len(values)
    assert 0 < low < mean < high < max(values)
    spread = bootstrap_ci([-1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0])
    assert spread[0] < 0 < spread[1]
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_compare_pairs_units_and_skips_missing_and_nan():
    method = {("a", 0): 0.5, ("a", 1): 0.2, ("b", 0): float("nan"), ("c", 0): 1.0}
    baseline = {("a", 0): 0.1, ("a", 1): 0.4, ("b", 0): 0.3}
    result = compare(method, baseline)
    assert result.n == 2
    assert result.mean == pytest.approx(((0.5 - 0.1) + (0.2 - 0.4)) / 2)
    assert (result.above, result.below) == (1, 1)
    assert result.sign_p == 1.0
