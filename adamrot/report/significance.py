"""Tests on the differences the report prints (docs/CONVENTIONS.md §6): Holm's step-down
adjustment over a family (:func:`holm`), the equivalence test against a stated margin (TOST,
:func:`tost`) and the seeds a two-sided test or a TOST needs for 80 % power (noncentral t:
:func:`seeds_for_power`, :func:`seeds_for_equivalence`). The intervals they test come from
:mod:`.stats`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from .stats import LEVEL, Interval, t_quantile, t_sf


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family = the non-None entries, in any order):
    ``p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j))`` for the sorted ``p_(1) <= ... <= p_(m)``.
    Rejecting where the adjusted p < alpha controls the family-wise error rate at alpha."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    run = 0.0
    for j, i in enumerate(order):
        run = max(run, min(1.0, (m - j) * float(pvalues[i])))
        out[i] = run
    return out


@dataclass(frozen=True)
class Equivalence:
    """Two one-sided t tests (TOST) of ``|true difference| < margin`` at level ``alpha``:
    equivalent iff ``p < alpha`` iff the ``1 - 2 alpha`` interval lies inside ±margin."""

    margin: float
    p: float
    lo: float          # the 1 - 2 alpha (90 %) interval
    hi: float
    alpha: float = 0.05

    @property
    def equivalent(self) -> bool:
        return self.p < self.alpha


def tost(iv: Interval, margin: float, alpha: float = 0.05) -> Equivalence | None:
    """TOST for the difference ``iv`` (from :func:`diff_ci` or :func:`mean_ci`): the larger
    of the one-sided p-values of ``d <= -margin`` and ``d >= margin``. None without a spread."""
    if iv.se is None or margin <= 0 or not math.isfinite(iv.value):
        return None
    d = iv.value
    if iv.se == 0:
        p = 0.0 if abs(d) < margin else 1.0
        return Equivalence(margin, p, d, d, alpha)
    p = max(t_sf((d + margin) / iv.se, iv.df), t_sf((margin - d) / iv.se, iv.df))
    h = t_quantile(1 - alpha, iv.df) * iv.se
    return Equivalence(margin, p, d - h, d + h, alpha)


_MAX_SEEDS = 100_000


def _smallest_n(ok: Callable[[int], bool], start: int) -> int | None:
    """Smallest ``n >= 2`` with ``ok(n)`` for a monotone ``ok``, searched from ``start``."""
    n = max(2, min(_MAX_SEEDS, start))
    while not ok(n):
        if n >= _MAX_SEEDS:
            return None
        n = min(_MAX_SEEDS, n + max(1, n // 20))
    while n > 2 and ok(n - 1):
        n -= 1
    return n


def _se_df(sd: float, sd_b: float | None, n: int) -> tuple[float, float]:
    """Standard error and degrees of freedom of a paired (``sd_b`` None: ``sd`` of the
    differences) or two-sample Welch difference with ``n`` seeds per side."""
    if sd_b is None:
        return sd / math.sqrt(n), n - 1.0
    va, vb = sd * sd / n, sd_b * sd_b / n
    den = (va * va + vb * vb) / (n - 1)
    return math.sqrt(va + vb), ((va + vb) ** 2 / den if den > 0 else 2.0 * n - 2)


def t_test_power(gap: float, sd: float, n: int, level: float = LEVEL,
                 sd_b: float | None = None) -> float:
    """Power of the two-sided t test (paired, or Welch's with ``sd_b`` and ``n`` per side) at
    level ``1 - level`` when the true difference is ``gap``: ``P(|T'| > t_crit)``, ``T'``
    noncentral t with noncentrality ``gap / se``."""
    from scipy.stats import nct

    se, df = _se_df(sd, sd_b, n)
    crit = t_quantile((1 + level) / 2, df)
    nc = abs(gap) / se
    return float(nct.sf(crit, df, nc) + nct.cdf(-crit, df, nc))


def seeds_for_power(gap: float, sd: float | None, power: float = 0.8, level: float = LEVEL,
                    sd_b: float | None = None) -> int | None:
    """Seeds (per side for Welch) for the two-sided t test at level ``1 - level`` to detect a
    true difference ``gap`` with probability ``power``, at spread ``sd`` (noncentral t; the
    spread taken as known). None when ``gap`` is 0 or the spread unknown."""
    if sd is None or gap == 0 or not math.isfinite(gap) or not math.isfinite(sd):
        return None
    if sd == 0 and not sd_b:
        return 2
    s = math.hypot(sd, sd_b or 0.0)
    start = int(((1.96 + 0.84) * s / abs(gap)) ** 2)
    return _smallest_n(lambda n: t_test_power(gap, sd, n, level, sd_b) >= power, start)


def tost_power(gap: float, sd: float, margin: float, n: int, alpha: float = 0.05,
               sd_b: float | None = None) -> float:
    """Power of TOST at true difference ``gap`` (lower bound ``1 - P(T_L <= t) - P(T_U >= -t)``
    with ``T_L``, ``T_U`` noncentral t at ``(gap ± margin) / se``; exact to well under 1 % at
    the sample sizes it is used for)."""
    from scipy.stats import nct

    se, df = _se_df(sd, sd_b, n)
    t = t_quantile(1 - alpha, df)
    miss = nct.cdf(t, df, (gap + margin) / se) + nct.sf(-t, df, (gap - margin) / se)
    return float(max(0.0, 1.0 - miss))


def seeds_for_equivalence(gap: float, sd: float | None, margin: float, power: float = 0.8,
                          alpha: float = 0.05, sd_b: float | None = None) -> int | None:
    """Seeds for TOST to show ``|difference| < margin`` with probability ``power`` when the true
    difference is ``gap``; None when ``|gap| >= margin`` (never, whatever the seeds)."""
    if sd is None or not math.isfinite(gap) or abs(gap) >= margin:
        return None
    if sd == 0 and not sd_b:
        return 2
    s = math.hypot(sd, sd_b or 0.0)
    start = int(((1.645 + 0.84) * s / (margin - abs(gap))) ** 2)
    return _smallest_n(lambda n: tost_power(gap, sd, margin, n, alpha, sd_b) >= power, start)
