"""adamrot.report.stats: first-passage interpolation, paired per-seed slowdowns, p-values, Holm,
TOST and the seeds for 80 % power. References are scipy-free: closed forms of Student's t for
1 and 2 degrees of freedom, hand computations, published sample sizes and a Monte Carlo."""
from __future__ import annotations

import math

import numpy as np
import pytest

from adamrot.report import significance, stats

STEPS = np.array([0, 100, 200, 300])


def t_sf_df1(x):                       # Cauchy: P(T > x) = 1/2 - atan(x)/pi
    return 0.5 - math.atan(x) / math.pi


def t_sf_df2(x):                       # P(T > x) = 1/2 - x / (2 sqrt(2 + x^2))
    return 0.5 - x / (2 * math.sqrt(2 + x * x))


def t_q_df2(p):                        # quantile for df = 2
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def test_first_passage_interpolates_between_evaluations():
    v = [4.0, 3.0, 2.0, 1.5]
    assert stats.first_passage(STEPS, v, 2.5) == 150.0            # halfway from 3 to 2
    assert stats.first_passage(STEPS, v, 2.75) == 125.0
    assert stats.first_passage(STEPS, v, 3.0) == 100.0            # exactly at a point
    assert stats.first_passage(STEPS, v, 5.0) == 0.0              # already there
    assert stats.first_passage(STEPS, v, 1.0) is None             # never
    # the first crossing counts, not a later one
    assert stats.first_passage(STEPS, [4.0, 2.0, 3.0, 1.0], 2.5) == 75.0
    # higher is better
    assert stats.first_passage(STEPS, [0.1, 0.5, 0.7, 0.8], 0.6, mode="max") == 150.0
    # the grid version reads only the evaluation points
    assert stats.first_reach(STEPS, v, 2.5) == 200


def test_paired_slowdown_is_the_mean_of_per_seed_values_with_a_t_interval():
    """Baseline seeds end at 2.0 and 1.8; each label seed is the same curve shifted by a
    known number of steps, so the per-seed slowdowns are known in closed form."""
    steps = np.arange(0, 1001, 100)
    b0 = 4.0 - 0.002 * steps                      # reaches its final 2.0 at 1000
    b1 = 3.8 - 0.002 * steps                      # 1.8 at 1000
    r0 = 4.0 - 0.0016 * steps                     # reaches 2.0 at 1250: never within 1000
    r1 = 3.8 - 0.0025 * steps                     # reaches 1.8 at 800: -20 %
    base = [(steps, b0), (steps, b1)]
    sd = stats.compute_slowdown(base, [(steps, r0), (steps, r1)], paired=True)
    assert sd.method == "paired t" and sd.n == 2 and sd.never == 1
    assert sd.text == "never reached (1/2 seeds)" and sd.value == math.inf
    assert sd.slowdown is None and sd.interval is None
    # equivalent: r0 ends at 2.4, which b0 passes at 800 (1000/800 - 1 = +25 %); r1 ends at
    # 1.3, below anything b1 reached: beyond baseline in 1 of 2 seeds
    assert sd.per_seed[0] == (math.inf, pytest.approx(0.25, rel=1e-12))
    assert sd.beyond == 1 and sd.eq_text == "beyond baseline (1/2 seeds)"
    # both finite: the mean and the t interval (df = 1: t_{0.975,1} = tan(0.475 pi))
    r0b = 4.0 - 0.0025 * steps                    # reaches 2.0 at 800: -20 %
    r1b = 3.8 - 0.004 * steps                     # 1.8 at 500: -50 %
    sd = stats.compute_slowdown(base, [(steps, r0b), (steps, r1b)], paired=True)
    assert sd.slowdown == pytest.approx(-0.35, rel=1e-12)
    half = math.tan(0.475 * math.pi) * (0.3 / math.sqrt(2)) / math.sqrt(2)
    assert sd.interval == (pytest.approx(-0.35 - half, rel=1e-9),
                           pytest.approx(-0.35 + half, rel=1e-9))
    # the seed-mean curves give the displayed L* and steps: mean base ends at 1.9 at 1000
    assert sd.target == pytest.approx(1.9) and sd.steps_base == pytest.approx(1000.0)
    # equivalent per seed: r0b ends at 1.5 and r1b at -0.2, both below their baselines
    assert sd.beyond == 2 and sd.eq_text == "beyond baseline"
    # a baseline seed at its L* from step 0 on: that seed's slowdown is n/a, not "never"
    flat = (steps, np.full(steps.size, 2.0))
    sd = stats.compute_slowdown([flat, (steps, b1)], [(steps, r0b), (steps, r1b)], paired=True)
    assert sd.never == 0 and math.isnan(sd.per_seed[0][0]) and sd.text == "n/a"
    # unpaired (different seeds): the bootstrap over the seed-mean curves is used instead
    assert stats.compute_slowdown(base, [(steps, r0b), (steps, r1b)]).method == "bootstrap"


def test_p_values_match_the_closed_form_t_distributions():
    iv = stats.mean_ci([1.0, 3.0])                # mean 2, se 1, t = 2, df 1
    assert iv.p == pytest.approx(2 * t_sf_df1(2.0), rel=1e-10)
    iv = stats.mean_ci([1.0, 2.0, 3.0])           # mean 2, sd 1, se 1/sqrt(3), df 2
    assert iv.p == pytest.approx(2 * t_sf_df2(2 * math.sqrt(3)), rel=1e-10)
    d = stats.diff_ci([2.0, 3.0, 4.0], [1.0, 1.0, 1.0], paired=True)
    assert (d.se, d.df) == (pytest.approx(1 / math.sqrt(3)), 2.0)
    assert d.p == pytest.approx(2 * t_sf_df2(2 * math.sqrt(3)), rel=1e-10)
    assert stats.mean_ci([0.5]).p is None                       # one seed: no test
    assert stats.diff_ci([1.0, 1.0], [0.0, 0.0], paired=True).p == 0.0   # no spread
    # Welch: both sides of two seeds with equal spread -> df = 2 (Satterthwaite)
    w = stats.diff_ci([1.0, 3.0], [0.0, 0.0 + 2.0])
    assert w.df == pytest.approx(2.0) and w.se == pytest.approx(math.sqrt(2.0))
    assert w.p == pytest.approx(2 * t_sf_df2(1 / math.sqrt(2)), rel=1e-10)


def test_holm_step_down():
    got = significance.holm([0.01, 0.04, 0.03, 0.005, None])
    # sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.06, 0.04) = 0.06
    assert got[:4] == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06),
                       pytest.approx(0.02)]
    assert got[4] is None
    assert significance.holm([0.6, 0.9]) == [1.0, 1.0]                  # capped at 1
    assert significance.holm([]) == []


def test_tost_is_two_one_sided_t_tests():
    d = stats.diff_ci([0.1, 0.2, 0.3], [0.0, 0.0, 0.0], paired=True)   # 0.2, se 0.1/sqrt 3
    se = 0.1 / math.sqrt(3)
    e = significance.tost(d, 0.5)
    assert e.p == pytest.approx(t_sf_df2(0.3 / se), rel=1e-9) and e.equivalent
    h = t_q_df2(0.95) * se                                            # the 90 % interval
    assert (e.lo, e.hi) == (pytest.approx(0.2 - h, rel=1e-9), pytest.approx(0.2 + h, rel=1e-9))
    # a margin inside the interval's reach is not shown
    e = significance.tost(d, 0.25)
    assert e.p == pytest.approx(t_sf_df2(0.05 / se), rel=1e-9) and not e.equivalent
    assert significance.tost(stats.mean_ci([1.0]), 0.1) is None


def test_seeds_for_power_matches_published_sample_sizes():
    # paired / one-sample t test, alpha 0.05 two-sided, 80 % power (Cohen 1988; G*Power):
    # effect size 1.0 -> 10 pairs, 0.5 -> 34 pairs
    assert significance.seeds_for_power(1.0, 1.0) == 10
    assert significance.seeds_for_power(-0.5, 1.0) == 34
    # two independent groups, effect size 1.0 -> 17 per group; 0.5 -> 64 per group
    assert significance.seeds_for_power(1.0, 1.0, sd_b=1.0) == 17
    assert significance.seeds_for_power(0.5, 1.0, sd_b=1.0) == 64
    assert significance.seeds_for_power(0.0, 1.0) is None and significance.seeds_for_power(1.0, None) is None


def test_power_and_tost_power_against_monte_carlo():
    rng = np.random.default_rng(0)
    n, gap, sd, margin, sims = 6, 0.5, 1.0, 1.0, 40_000
    x = rng.normal(gap, sd, size=(sims, n))
    m, se = x.mean(1), x.std(1, ddof=1) / math.sqrt(n)
    t975 = stats.t_quantile(0.975, n - 1)
    mc = float(np.mean(np.abs(m / se) > t975))
    assert significance.t_test_power(gap, sd, n) == pytest.approx(mc, abs=0.01)
    x = rng.normal(0.1, 0.5, size=(sims, 8))
    m, se = x.mean(1), x.std(1, ddof=1) / math.sqrt(8)
    t95 = stats.t_quantile(0.95, 7)
    mc = float(np.mean(((m + 0.5) / se > t95) & ((0.5 - m) / se > t95)))
    assert significance.tost_power(0.1, 0.5, 0.5, 8) == pytest.approx(mc, abs=0.01)
    # the seeds TOST needs: power crosses 80 % there and not one seed earlier
    k = significance.seeds_for_equivalence(0.1, 0.5, 0.5)
    assert significance.tost_power(0.1, 0.5, 0.5, k) >= 0.8 > significance.tost_power(0.1, 0.5, 0.5, k - 1)
    assert significance.seeds_for_equivalence(0.6, 0.5, 0.5) is None     # |Δ| beyond the margin
