"""Interval maths of the probes (rotations.probes.intervals) on closed forms: Student-t
quantiles, the mean interval, the nested rows x directions interval and its variance
components, the rows/directions needed, Welch differences, and coverage by simulation."""
from __future__ import annotations

import math
import random

import pytest

from rotations.probes.intervals import (difference_interval, directions_needed, evidence,
                                        excludes, mean_interval, nested_interval, rows_needed,
                                        rows_needed_two_sample, t_quantile, t_two_sided)

# two-sided 95 % critical values of Student's t (statistical tables)
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 10: 2.2281, 30: 2.0423,
        100: 1.9840, 2000: 1.9612}


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantile_matches_tables(df):
    assert t_quantile(0.975, df) == pytest.approx(T975[df], abs=2e-4)
    assert t_quantile(0.025, df) == pytest.approx(-T975[df], abs=2e-4)
    assert t_two_sided(T975[df], df) == pytest.approx(0.95, abs=1e-4)


def test_t_cdf_closed_forms():
    # df = 1 (Cauchy): P(|T| <= 1) = 1/2; df = 2: P(|T| <= t) = t / sqrt(2 + t^2)
    assert t_two_sided(1.0, 1) == pytest.approx(0.5, abs=1e-15)
    for t in (0.3, 1.0, 4.0):
        assert t_two_sided(t, 2) == pytest.approx(t / math.sqrt(2 + t * t), abs=1e-14)
    # df = 3: 2/pi (theta + sin theta cos theta), theta = atan(t / sqrt 3)
    th = math.atan(1.5 / math.sqrt(3))
    assert t_two_sided(1.5, 3) == pytest.approx(2 / math.pi * (th + math.sin(th) * math.cos(th)))


def test_mean_interval_closed_form():
    iv = mean_interval([1, 2, 3, 4, 5])
    assert iv["mean"] == 3 and iv["sd"] == pytest.approx(math.sqrt(2.5))
    assert iv["half_width"] == pytest.approx(T975[4] * math.sqrt(2.5) / math.sqrt(5), rel=1e-4)
    assert iv["lo"] == pytest.approx(3 - iv["half_width"]) and excludes(iv, 0.0)
    assert not excludes(iv, 3.5)
    one = mean_interval([7.0])
    assert one["mean"] == 7.0 and one["lo"] is None and excludes(one) is None


def test_nested_interval_components():
    # row means 1, 2, 3 (+ known offsets per direction): within-row sd 1 exactly
    groups = [[m - 1, m + 1] for m in (1.0, 2.0, 3.0)]        # within variance 2 (ddof 1)
    iv = nested_interval(groups)
    base = mean_interval([1.0, 2.0, 3.0])
    assert (iv["mean"], iv["lo"], iv["hi"]) == pytest.approx((base["mean"], base["lo"], base["hi"]))
    assert iv["directions"] == 2 and iv["sd_within_row"] == pytest.approx(math.sqrt(2))
    # var of row means (1) = sigma_b^2 + sigma_w^2 / M = sigma_b^2 + 1  ->  sigma_b = 0
    assert iv["sd_between_rows"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        nested_interval([[1.0, 2.0], [3.0]])


def test_rows_needed_is_the_smallest_n():
    n = rows_needed(1.0, 2.0)
    assert n == 18          # t_16 * 2 / sqrt(17) = 1.028 > 1; t_17 * 2 / sqrt(18) = 0.995 < 1
    assert t_quantile(0.975, n - 1) * 2 / math.sqrt(n) < 1
    assert t_quantile(0.975, n - 2) * 2 / math.sqrt(n - 1) >= 1
    assert rows_needed(0.0, 1.0) is None and rows_needed(1.0, None) is None
    # large n: the normal limit (z = 1.95996)
    assert rows_needed(0.01, 1.0) == pytest.approx((1.959964 / 0.01) ** 2, rel=2e-3)


def test_directions_needed_closed_form():
    # gap 1, sigma_b 0, sigma_w 3, N = 20 rows: need 9 / M < 20 / t_19^2
    t19 = t_quantile(0.975, 19)
    m = directions_needed(1.0, 0.0, 3.0, 20)
    assert 9 / m < 20 / t19 ** 2 <= 9 / (m - 1)
    assert directions_needed(1.0, 10.0, 3.0, 20) is None       # rows alone too spread out
    iv = evidence(nested_interval([[0.5, 1.5], [1.0, 2.0], [0.8, 1.2], [1.1, 0.9]]))
    assert iv["excludes"] is True and iv["rows_needed"] is not None
    assert iv["rows_needed_any_directions"] <= iv["rows_needed"]


def test_difference_interval_welch():
    a = mean_interval([10, 11, 12, 13])
    b = mean_interval([1, 2, 3, 4, 5, 6])
    d = difference_interval(a, b)
    se = math.sqrt(a["se"] ** 2 + b["se"] ** 2)
    df = math.floor(se ** 4 / (a["se"] ** 4 / 3 + b["se"] ** 4 / 5))
    assert d["mean"] == pytest.approx(a["mean"] - b["mean"]) and d["df"] == df
    assert d["half_width"] == pytest.approx(t_quantile(0.975, df) * se)
    assert d["excludes"] and d["rows_needed"] <= 4
    n = rows_needed_two_sample(1.0, 1.0, 1.0)
    assert n == rows_needed_two_sample(-1.0, 1.0, 1.0) and n > rows_needed(1.0, 1.0)


def test_interval_coverage_by_simulation():
    """95 % intervals of a normal mean from 5 draws cover it 95 % of the time."""
    rng = random.Random(0)
    reps, hit = 4000, 0
    for _ in range(reps):
        iv = mean_interval([rng.gauss(2.0, 3.0) for _ in range(5)])
        hit += iv["lo"] <= 2.0 <= iv["hi"]
    se = math.sqrt(0.95 * 0.05 / reps)
    assert abs(hit / reps - 0.95) < 4 * se


def test_stratified_interval_closed_form():
    from rotations.probes.intervals import stratified_interval

    strata = {"a": [1.0, 2.0, 3.0], "b": [10.0, 14.0]}
    iv = stratified_interval(strata, {"a": 300, "b": 100})
    assert iv["weights"] == {"a": 0.75, "b": 0.25}
    assert iv["mean"] == pytest.approx(0.75 * 2.0 + 0.25 * 12.0)
    va, vb = (0.75 ** 2) * 1.0 / 3, (0.25 ** 2) * 8.0 / 2     # w² s² / n
    assert iv["se"] == pytest.approx(math.sqrt(va + vb))
    assert iv["df"] == math.floor((va + vb) ** 2 / (va * va / 2 + vb * vb / 1))
    assert iv["half_width"] == pytest.approx(t_quantile(0.975, iv["df"]) * iv["se"])
    # one value in a stratum: the mean but no interval
    one = stratified_interval({"a": [1.0, 3.0], "b": [5.0]}, {"a": 1, "b": 1})
    assert one["mean"] == pytest.approx(3.5) and one["lo"] is None
    with pytest.raises(ValueError):
        stratified_interval({"a": [1.0]}, {"b": 1})
