"""adamrot.report.stats: intervals over seeds, the bootstrap and the slowdown with its interval.

Expected values come from scipy.stats (t intervals) or are enumerated by hand (bootstrap);
tests/test_stats_tests.py covers the p-values, Holm, TOST, power and the paired slowdowns with
scipy-free references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st

from adamrot.report import stats

STEPS = np.array([50, 100, 150, 200])


def c(vals):
    return (STEPS, np.asarray(vals, dtype=np.float64))


def test_t_quantile_matches_closed_forms():
    for p in (0.6, 0.9, 0.975, 0.995):
        assert stats.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)
        assert stats.t_quantile(p, 2) == pytest.approx(
            (2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-12)


def test_mean_ci_is_student_t_and_one_seed_has_no_interval():
    iv = stats.mean_ci([3.25, 2.75])
    assert iv.value == 3.0 and iv.n == 2
    half = 12.706204736174698 * math.sqrt(0.125) / math.sqrt(2)      # t_{0.975,1} s / sqrt(n)
    assert iv.half_width == pytest.approx(half, rel=1e-12)
    xs = [2.1, 2.4, 2.2, 2.9, 2.5]
    lo, hi = st.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=st.sem(xs))
    iv = stats.mean_ci(xs)
    assert (iv.lo, iv.hi) == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
    one = stats.mean_ci([1.5])
    assert one.value == 1.5 and one.n == 1
    assert not one.has_interval and one.lo is None and one.half_width is None
    assert one.excludes_zero is None
    assert not stats.mean_ci([1.0, float("nan")]).has_interval   # a diverged seed: no interval


def test_difference_intervals_welch_and_paired():
    a, b = [1.0, 2.0, 3.5], [0.0, 0.5]
    d = stats.diff_ci(a, b)
    want = st.ttest_ind(a, b, equal_var=False).confidence_interval()
    assert d.value == pytest.approx(np.mean(a) - np.mean(b), rel=1e-15)
    assert (d.lo, d.hi) == (pytest.approx(want.low, rel=1e-12), pytest.approx(want.high, rel=1e-12))
    assert d.method == "Welch t" and d.excludes_zero is False
    b3 = [0.0, 0.5, 1.0]
    p = stats.diff_ci(a, b3, paired=True)
    want = st.ttest_rel(a, b3).confidence_interval()
    assert (p.lo, p.hi) == (pytest.approx(want.low, rel=1e-12), pytest.approx(want.high, rel=1e-12))
    assert p.method == "paired t"
    # a clear shift: the interval excludes zero
    assert stats.diff_ci([3.0, 3.1, 3.2], [2.0, 2.1, 2.2], paired=True).excludes_zero is True
    assert stats.diff_ci([3.0, 3.1, 2.9], [2.0, 2.1, 2.2]).excludes_zero is True
    # one seed on a side: a difference but no interval
    one = stats.diff_ci([3.0], [2.0, 2.5])
    assert one.value == 0.75 and not one.has_interval


def test_bootstrap_exact_enumeration():
    # mean of 3 values resampled: 27 equally likely ordered resamples; P(mean = 0) = 1/27 > 2.5%
    lo, hi = stats.bootstrap_ci([[0.0, 1.0, 2.0]], lambda g: float(np.mean(g)))
    assert (lo, hi) == (0.0, 2.0)
    # 5 values: P(mean = min) = 5^-5 < 2.5%: the interval is inside the range
    lo, hi = stats.bootstrap_ci([[0.0, 1.0, 2.0, 3.0, 4.0]], lambda g: float(np.mean(g)))
    assert 0.0 < lo < 2.0 < hi < 4.0
    # two groups, difference of means; every resample of {1} x {0, 10} gives 1 - 0, 1 - 5, 1 - 10
    lo, hi = stats.bootstrap_ci([[1.0], [0.0, 10.0]], lambda a, b: np.mean(a) - np.mean(b))
    assert (lo, hi) == (-9.0, 1.0)
    # above the enumeration limit: a fixed-seed Monte Carlo, reproducible
    g = [list(range(9))]
    assert stats.bootstrap_ci(g, np.mean) == stats.bootstrap_ci(g, np.mean)


def test_slowdown_interval_by_exact_bootstrap():
    """Baseline seeds all [4, 3, 3, 3]: L* = 3 at step 100. The label's seeds reach 3 at
    steps 100, 150, 200 and stay there; a resample's mean curve reaches 3 when all its seeds
    have, i.e. at the largest reach step drawn: P(100) = 1/27, P(150) = 7/27, P(200) = 19/27."""
    base = [c([4, 3, 3, 3])] * 3
    lab = [c([4, 3, 3, 3]), c([4, 4, 3, 3]), c([4, 4, 4, 3])]
    sd = stats.compute_slowdown(base, lab)
    assert (sd.target, sd.steps_base, sd.steps, sd.slowdown) == (3.0, 100, 200, 1.0)
    assert sd.interval == (0.0, 1.0)
    # equivalent slowdown: the label ends at 3 = L*, reached by the baseline at 100: T/100 - 1
    assert sd.equivalent == 1.0 and sd.eq_interval == (1.0, 1.0)
    # a seed that never reaches L*: point "never reached", upper end never reached
    lab2 = [c([4, 3, 3, 3]), c([4, 4, 3, 3]), c([4, 4, 4, 4])]
    sd = stats.compute_slowdown(base, lab2)
    assert sd.text == stats.NEVER and sd.value == math.inf
    assert sd.interval == (0.0, math.inf)
    assert stats.interval_text(sd.interval) == "[+0.0%, never reached]"
    # one seed on a side: no bootstrap
    assert stats.compute_slowdown(base, lab[:1]).interval is None
    # seeds logged at different steps (one has an extra point): resampled curve by curve,
    # common steps per resample; the same reach steps, so the same interval
    odd = (np.array([50, 100, 150, 175, 200]), np.array([4.0, 3, 3, 3, 3]))
    assert stats.compute_slowdown(base, [odd] + lab[1:]).interval == (0.0, 1.0)


def test_slowdown_point_estimates():
    base = [c([4.0, 3.25, 3.25, 3.25]), c([4.0, 2.75, 2.75, 2.75])]
    rot = [c([4.0, 3.75, 3.25, 3.0]), c([4.0, 3.25, 2.75, 2.5])]
    sd = stats.compute_slowdown(base, rot, bootstrap=False)
    assert (sd.target, sd.steps_base, sd.steps, sd.text) == (3.0, 100, 150, "+50.0%")
    # equivalent: the label ends at 2.75 (mean), which the baseline never gets to
    assert sd.equivalent == -math.inf and stats.pct_text(sd.equivalent) == stats.BEYOND
    # smoothing K=2 and a higher-is-better metric
    # smoothed: base [4, 3.5, 3, 3] (L* = 3 at 150), label [4, 3.5, 2.5, 2] crosses 3 at 125
    sd = stats.compute_slowdown([c([4.0, 3.0, 3.0, 3.0])], [c([4.0, 3.0, 2.0, 2.0])], k=2)
    assert (sd.target, sd.steps_base, sd.steps) == (3.0, 150, 125)
    assert sd.slowdown == pytest.approx(-1 / 6, rel=1e-15)
    sd = stats.compute_slowdown([c([0.1, 0.5, 0.5, 0.5])], [c([0.1, 0.2, 0.3, 0.5])], mode="max")
    assert (sd.steps_base, sd.steps, sd.text) == (100, 200, "+100.0%")


def test_seed_average_band_is_the_t_interval_and_trailing_mean():
    assert stats.trailing_mean([4, 3, 2, 1], 2).tolist() == [4, 3.5, 2.5, 1.5]
    assert stats.trailing_mean([4, 3, 2, 1], 3).tolist() == [4, 3.5, 3, 2]
    s, m, lo, hi = stats.seed_average([c([1, 2, 3, 4]), c([3, 2, 1, 0])])
    assert m.tolist() == [2, 2, 2, 2]
    h = 12.706204736174698 * np.std([1, 3], ddof=1) / math.sqrt(2)
    assert hi[0] - m[0] == pytest.approx(h, rel=1e-12) and hi[1] == m[1] == lo[1]
    s, m, lo, hi = stats.seed_average([c([1, 2, 3, 4])])
    assert (lo == m).all() and (hi == m).all()


def test_last_fraction_improvement():
    steps = np.arange(0, 1001, 100)
    flat = np.r_[np.linspace(4, 2.02, 9), 2.01, 2.0]          # last 20 %: 2.02 -> 2.0
    assert stats.last_fraction_improvement(steps, flat) == pytest.approx(0.02 / 2.02)
    acc = np.r_[[0.5] * 9, 0.55, 0.6]                            # higher is better
    assert stats.last_fraction_improvement(steps, acc, mode="max") == pytest.approx(0.2)
    assert stats.last_fraction_improvement(steps[:1], flat[:1]) is None
