"""Statistics over seeds: smoothing, seed averages, confidence intervals, slowdowns.

Definitions: docs/CONVENTIONS.md §6 and docs/REPRODUCE.md "How to read the numbers".
A mean over seeds carries a Student-t interval; a difference of two labels a paired t interval
(same seeds on both sides) or Welch's; a quantity computed from seed-averaged curves (the
slowdown, the equivalent slowdown) a percentile bootstrap over seeds, exact (every resample
enumerated) when the seeds are few. One seed: no interval, never a zero-width one.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

LEVEL = 0.95
NEVER = "never reached"
BEYOND = "beyond baseline"
Curve = tuple[np.ndarray, np.ndarray]


class StatsError(ValueError):
    pass


def t_quantile(p: float, df: float) -> float:
    from scipy.stats import t   # scipy comes with scikit-learn (setup.cfg)

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval; ``lo``/``hi`` None = no interval (one seed)."""

    value: float
    lo: float | None
    hi: float | None
    n: int
    method: str = ""

    @property
    def has_interval(self) -> bool:
        return self.lo is not None and self.hi is not None

    @property
    def half_width(self) -> float | None:
        return None if not self.has_interval else (self.hi - self.lo) / 2

    @property
    def excludes_zero(self) -> bool | None:
        if not self.has_interval:
            return None
        return bool(self.lo > 0 or self.hi < 0)


def mean_ci(xs: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and Student-t interval ``mean ± t_{(1+level)/2, n-1} s / sqrt(n)``."""
    a = np.asarray(list(xs), dtype=np.float64)
    if a.size == 0:
        return Interval(float("nan"), None, None, 0, "t")
    m = float(a.mean())
    if a.size < 2 or not np.all(np.isfinite(a)):
        return Interval(m, None, None, int(a.size), "t")
    h = t_quantile((1 + level) / 2, a.size - 1) * float(a.std(ddof=1)) / math.sqrt(a.size)
    return Interval(m, m - h, m + h, int(a.size), "t")


def diff_ci(a: Sequence[float], b: Sequence[float], level: float = LEVEL,
            paired: bool = False) -> Interval:
    """``mean(a) - mean(b)`` with a paired t interval (``a[i]``, ``b[i]`` share a seed) or
    Welch's interval (Welch--Satterthwaite degrees of freedom)."""
    x, y = np.asarray(list(a), np.float64), np.asarray(list(b), np.float64)
    if paired:
        if x.size != y.size:
            raise StatsError("paired difference needs the same number of values")
        r = mean_ci(x - y, level)
        return Interval(r.value, r.lo, r.hi, r.n, "paired t")
    d = float(x.mean() - y.mean()) if x.size and y.size else float("nan")
    n = int(min(x.size, y.size))
    if x.size < 2 or y.size < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return Interval(d, None, None, n, "Welch t")
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(d, d, d, n, "Welch t")
    df = (va + vb) ** 2 / (va ** 2 / (x.size - 1) + vb ** 2 / (y.size - 1))
    h = t_quantile((1 + level) / 2, df) * se
    return Interval(d, d - h, d + h, n, "Welch t")


def _quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Smallest value whose cumulative weight reaches ``q`` (inverted CDF; handles inf)."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order]) / weights.sum()
    i = int(np.searchsorted(cum, q - 1e-12, side="left"))
    return float(values[order][min(i, len(order) - 1)])


def bootstrap_ci(groups: Sequence[Sequence[Any]], statistic: Callable[..., float],
                 level: float = LEVEL, n_boot: int = 4000, seed: int = 0,
                 exact_limit: int = 20_000) -> tuple[float, float]:
    """Percentile bootstrap over the members of each group (resampled independently with
    replacement; ``statistic(*resampled_groups)``, which may return ±inf). Every ordered
    resample is enumerated when there are at most ``exact_limit`` of them, else ``n_boot``
    random ones (fixed ``seed``)."""
    sizes = [len(g) for g in groups]
    total = math.prod(n ** n for n in sizes)
    if total <= exact_limit:
        per = [list(itertools.product(range(n), repeat=n)) for n in sizes]
        draws = itertools.product(*per)
    else:
        rng = np.random.default_rng(seed)
        draws = ([tuple(rng.integers(0, n, n)) for n in sizes] for _ in range(n_boot))
    vals = np.asarray([statistic(*[[g[i] for i in ix] for g, ix in zip(groups, d)])
                       for d in draws], dtype=np.float64)
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        raise StatsError("the statistic is undefined on every resample")
    w = np.ones_like(vals)
    a = (1 - level) / 2
    return _quantile(vals, w, a), _quantile(vals, w, 1 - a)


# --------------------------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------------------------
def trailing_mean(values: Sequence[float], k: int = 1) -> np.ndarray:
    """``s_i = mean(v[max(0, i-k+1) : i+1])``; ``k <= 1`` returns the values."""
    v = np.asarray(values, dtype=np.float64)
    if k <= 1 or v.size == 0:
        return v.copy()
    c = np.cumsum(np.insert(v, 0, 0.0))
    i = np.arange(1, v.size + 1)
    lo = np.maximum(0, i - k)
    return (c[i] - c[lo]) / (i - lo)


def _stack(curves: Sequence[Curve], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed curves at the steps common to all: ``steps, matrix (seeds x steps)``."""
    sm = [(np.asarray(s), trailing_mean(v, k)) for s, v in curves]
    common = sm[0][0]
    for s, _ in sm[1:]:
        common = np.intersect1d(common, s)
    if common.size == 0:
        raise StatsError("seed curves have no step in common")
    return common.astype(np.int64), np.stack([v[np.searchsorted(s, common)] for s, v in sm])


def seed_average(curves: Sequence[Curve], k: int = 1, level: float = LEVEL
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Smooth each ``(steps, values)`` curve (trailing mean over ``k`` points), average at
    the steps common to all. Returns ``steps, mean, lo, hi`` with the pointwise t interval
    of the mean (lo = hi = mean for one curve)."""
    curves = [c for c in curves if c is not None and len(c[0])]
    if not curves:
        e = np.zeros(0)
        return e.astype(np.int64), e, e, e
    common, mat = _stack(curves, k)
    mean = mat.mean(axis=0)
    if mat.shape[0] > 1:
        h = t_quantile((1 + level) / 2, mat.shape[0] - 1) * mat.std(axis=0, ddof=1) \
            / math.sqrt(mat.shape[0])
        lo, hi = mean - h, mean + h
    else:
        lo, hi = mean.copy(), mean.copy()
    return common, mean, lo, hi


def first_reach(steps: Sequence[int], values: Sequence[float], target: float,
                mode: str = "min") -> int | None:
    """First step whose value is ``<= target`` (``>=`` for mode max), else None."""
    v = np.asarray(values, dtype=np.float64)
    hit = v <= target if mode == "min" else v >= target
    idx = np.flatnonzero(hit)
    return int(np.asarray(steps)[idx[0]]) if idx.size else None


def last_fraction_improvement(steps: Sequence[int], values: Sequence[float],
                              fraction: float = 0.2, mode: str = "min") -> float | None:
    """Relative improvement of a curve over its last ``fraction`` of steps:
    ``(C(t0) - C(T)) / |C(t0)|`` (sign flipped for mode max), t0 = the last logged step at or
    before (1-f) T (so the window covers at least the fraction)."""
    s, v = np.asarray(steps), np.asarray(values, dtype=np.float64)
    if s.size < 2:
        return None
    i0 = max(0, int(np.searchsorted(s, (1 - fraction) * s[-1], side="right")) - 1)
    if i0 >= s.size - 1 or v[i0] == 0:
        return None
    d = (v[i0] - v[-1]) / abs(v[i0])
    return float(d if mode == "min" else -d)


@dataclass
class Slowdown:
    """Slowdown of a label against its baseline (docs/CONVENTIONS.md §6)."""

    target: float             # L* = the baseline's final smoothed seed-mean value
    steps_base: int | None    # first step the baseline curve reaches L*
    steps: int | None         # first step the label's curve reaches L*
    slowdown: float | None    # steps / steps_base - 1; None = never reached / n/a
    equivalent: float | None = None   # T / t_base(label's final value) - 1
    interval: tuple[float, float] | None = None       # bootstrap over seeds, as fractions
    eq_interval: tuple[float, float] | None = None

    @property
    def value(self) -> float:
        """As a number: never reached = +inf, n/a = nan."""
        if self.steps is None:
            return math.inf
        return math.nan if self.slowdown is None else self.slowdown

    @property
    def text(self) -> str:
        if self.steps is None:
            return NEVER
        if self.slowdown is None:
            return "n/a"
        return f"{100.0 * self.slowdown:+.1f}%"


def pct_text(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    if x == math.inf:
        return NEVER
    if x == -math.inf:
        return BEYOND
    return f"{100.0 * x:+.1f}%"


def interval_text(iv: tuple[float, float] | None) -> str:
    return "" if iv is None else f"[{pct_text(iv[0])}, {pct_text(iv[1])}]"


def _reach(bs, bm, rs, rm, mode: str) -> Slowdown:
    """Slowdown from a baseline mean curve ``(bs, bm)`` and a label mean curve ``(rs, rm)``."""
    target = float(bm[-1])
    sb = first_reach(bs, bm, target, mode)
    sr = first_reach(rs, rm, target, mode) if rs.size else None
    sd = sr / sb - 1.0 if (sr is not None and sb) else None
    eq = None
    if rs.size:
        tb = first_reach(bs, bm, float(rm[-1]), mode)
        eq = -math.inf if tb is None else (math.nan if tb == 0 else int(rs[-1]) / tb - 1.0)
    return Slowdown(target=target, steps_base=sb, steps=sr, slowdown=sd, equivalent=eq)


def _mean_curve(curves: Sequence[Curve], k: int) -> tuple[np.ndarray, np.ndarray]:
    if not curves:
        return np.zeros(0, np.int64), np.zeros(0)
    steps, mat = _stack(curves, k)
    return steps, mat.mean(axis=0)


def compute_slowdown(baseline_curves: Sequence[Curve], curves: Sequence[Curve], k: int = 1,
                     mode: str = "min", level: float = LEVEL, bootstrap: bool = True
                     ) -> Slowdown:
    """Slowdown and equivalent slowdown of ``curves`` (seeds of one label) against
    ``baseline_curves``; with ``bootstrap`` and at least two seeds on each side, their
    percentile intervals from resampling the seeds of both labels."""
    base = [c for c in baseline_curves if c is not None and len(c[0])]
    lab = [c for c in curves if c is not None and len(c[0])]
    if not base:
        raise StatsError("baseline has no points for the metric")
    sd = _reach(*_mean_curve(base, k), *_mean_curve(lab, k), mode)
    if not (bootstrap and len(base) > 1 and len(lab) > 1):
        return sd
    # a resample's mean curve: rows of the smoothed matrix when the seeds share their steps
    aligned = all(len({tuple(c[0]) for c in g}) == 1 for g in (base, lab))
    if aligned:
        (bs, bmat), (rs, rmat) = _stack(base, k), _stack(lab, k)

    def point(ib, il) -> Slowdown | None:
        try:
            if aligned:
                return _reach(bs, bmat[ib].mean(axis=0), rs, rmat[il].mean(axis=0), mode)
            return _reach(*_mean_curve([base[i] for i in ib], k),
                          *_mean_curve([lab[i] for i in il], k), mode)
        except StatsError:
            return None

    def stat(attr):
        def f(ib, il):
            p = point(list(ib), list(il))
            if p is None:
                return math.nan
            if attr == "value":
                return p.value
            return math.nan if p.equivalent is None else p.equivalent
        return f
    groups = (list(range(len(base))), list(range(len(lab))))
    sd.interval = bootstrap_ci(groups, stat("value"), level)
    try:
        sd.eq_interval = bootstrap_ci(groups, stat("equivalent"), level)
    except StatsError:
        sd.eq_interval = None
    return sd
