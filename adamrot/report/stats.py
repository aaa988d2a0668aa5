"""Statistics over seeds: smoothing, seed averages, confidence intervals, slowdowns, tests.

Definitions: docs/CONVENTIONS.md §6 and docs/REPRODUCE.md "How to read the numbers".
A mean over seeds carries a Student-t interval; a difference of two labels a paired t interval
(same seeds on both sides) or Welch's, with its two-sided p-value (Holm's adjustment, equivalence tests and the seeds for 80 % power:
:mod:`.significance`). Slowdowns use first-passage times interpolated linearly between evaluation
points (:func:`first_passage`); with the same seeds on both sides they are computed per seed
(paired) and carry a t interval over seeds, else a percentile bootstrap over the seeds of both
labels (exact when the seeds are few). One seed: no interval, never a zero-width one.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
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


def t_sf(x: float, df: float) -> float:
    """``P(T > x)`` for Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.sf(x, df))


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval; ``lo``/``hi`` None = no interval (one seed).
    ``se`` and ``df``: the standard error and degrees of freedom behind a t interval (for
    :attr:`p` and :func:`tost`)."""

    value: float
    lo: float | None
    hi: float | None
    n: int
    method: str = ""
    se: float | None = None
    df: float | None = None

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

    @property
    def p(self) -> float | None:
        """Two-sided p-value of ``value = 0`` (the t test behind the interval); None without
        an interval; zero spread: 0 unless the value is 0."""
        if self.se is None or not math.isfinite(self.value):
            return None
        if self.se == 0:
            return 0.0 if self.value != 0 else 1.0
        return min(1.0, 2.0 * t_sf(abs(self.value) / self.se, self.df))


def mean_ci(xs: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and Student-t interval ``mean ± t_{(1+level)/2, n-1} s / sqrt(n)``."""
    a = np.asarray(list(xs), dtype=np.float64)
    if a.size == 0:
        return Interval(float("nan"), None, None, 0, "t")
    m = float(a.mean())
    if a.size < 2 or not np.all(np.isfinite(a)):
        return Interval(m, None, None, int(a.size), "t")
    se = float(a.std(ddof=1)) / math.sqrt(a.size)
    h = t_quantile((1 + level) / 2, a.size - 1) * se
    return Interval(m, m - h, m + h, int(a.size), "t", se, float(a.size - 1))


def diff_ci(a: Sequence[float], b: Sequence[float], level: float = LEVEL,
            paired: bool = False) -> Interval:
    """``mean(a) - mean(b)`` with a paired t interval (``a[i]``, ``b[i]`` share a seed) or
    Welch's interval (Welch--Satterthwaite degrees of freedom)."""
    x, y = np.asarray(list(a), np.float64), np.asarray(list(b), np.float64)
    if paired:
        if x.size != y.size:
            raise StatsError("paired difference needs the same number of values")
        r = mean_ci(x - y, level)
        return Interval(r.value, r.lo, r.hi, r.n, "paired t", r.se, r.df)
    d = float(x.mean() - y.mean()) if x.size and y.size else float("nan")
    n = int(min(x.size, y.size))
    if x.size < 2 or y.size < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return Interval(d, None, None, n, "Welch t")
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(d, d, d, n, "Welch t", 0.0, None)
    df = (va + vb) ** 2 / (va ** 2 / (x.size - 1) + vb ** 2 / (y.size - 1))
    h = t_quantile((1 + level) / 2, df) * se
    return Interval(d, d - h, d + h, n, "Welch t", se, float(df))


# --------------------------------------------------------------------------------------------
# multiple comparisons, equivalence, power
# --------------------------------------------------------------------------------------------
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


def first_passage(steps: Sequence[int], values: Sequence[float], target: float,
                  mode: str = "min") -> float | None:
    """First-passage time of a curve through ``target``, interpolated linearly between the
    evaluation points around the first crossing: with ``j`` the first point whose value is
    ``<= target`` (``>=`` for mode max), ``s_{j-1} + (s_j - s_{j-1}) (v_{j-1} - target) /
    (v_{j-1} - v_j)``; ``s_0`` when the first point already is; None when no point is."""
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if mode != "min":
        v, target = -v, -target
    idx = np.flatnonzero(v <= target)
    if not idx.size:
        return None
    j = int(idx[0])
    if j == 0:
        return float(s[0])
    v0, v1 = v[j - 1], v[j]
    return float(s[j - 1] + (s[j] - s[j - 1]) * (v0 - target) / (v0 - v1))


@dataclass
class Slowdown:
    """Slowdown of a label against its baseline (docs/CONVENTIONS.md §6).

    ``target``, ``steps_base`` and ``steps`` come from the seed-mean curves (interpolated
    first passages). With ``method == "paired t"`` the point estimates ``slowdown`` and
    ``equivalent`` are the means of the per-seed paired values (``per_seed``) and the
    intervals their t intervals; a seed that never reaches its baseline's L* (``never``) or
    ends below anything its baseline reached (``beyond``) has no finite value, and the mean is
    then not given. Otherwise the point estimates come from the seed-mean curves and the
    intervals (if any) from a percentile bootstrap over seeds."""

    target: float               # L* = the baseline's final smoothed seed-mean value
    steps_base: float | None    # first passage of the baseline's seed-mean curve through L*
    steps: float | None         # first passage of the label's seed-mean curve through L*
    slowdown: float | None      # steps / steps_base - 1; None = never reached / n/a
    equivalent: float | None = None   # T / t_base(label's final value) - 1
    interval: tuple[float, float] | None = None       # as fractions
    eq_interval: tuple[float, float] | None = None
    method: str = ""
    n: int = 0                  # seeds behind the estimate
    never: int = 0              # paired: seeds that never reach their L*
    beyond: int = 0             # paired: seeds beyond their baseline
    per_seed: list[tuple[float, float]] = field(default_factory=list)   # (slowdown, equivalent)

    @property
    def value(self) -> float:
        """As a number: never reached = +inf, n/a = nan."""
        if self.never or (self.steps is None and self.method != "paired t"):
            return math.inf
        return math.nan if self.slowdown is None else self.slowdown

    @property
    def text(self) -> str:
        if self.method == "paired t" and self.never:
            return NEVER + ("" if self.never == self.n else f" ({self.never}/{self.n} seeds)")
        if self.steps is None and self.method != "paired t":
            return NEVER
        if self.slowdown is None:
            return "n/a"
        return f"{100.0 * self.slowdown:+.1f}%"

    @property
    def eq_text(self) -> str:
        if self.method == "paired t" and self.beyond:
            return BEYOND + ("" if self.beyond == self.n else f" ({self.beyond}/{self.n} seeds)")
        return pct_text(self.equivalent)


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
    """Slowdown from a baseline curve ``(bs, bm)`` and a label curve ``(rs, rm)``
    (interpolated first passages)."""
    target = float(bm[-1])
    sb = first_passage(bs, bm, target, mode)
    sr = first_passage(rs, rm, target, mode) if rs.size else None
    sd = sr / sb - 1.0 if (sr is not None and sb) else None
    eq = None
    if rs.size:
        tb = first_passage(bs, bm, float(rm[-1]), mode)
        eq = -math.inf if tb is None else (math.nan if tb == 0 else float(rs[-1]) / tb - 1.0)
    return Slowdown(target=target, steps_base=sb, steps=sr, slowdown=sd, equivalent=eq)


def _mean_curve(curves: Sequence[Curve], k: int) -> tuple[np.ndarray, np.ndarray]:
    if not curves:
        return np.zeros(0, np.int64), np.zeros(0)
    steps, mat = _stack(curves, k)
    return steps, mat.mean(axis=0)


def _paired(sd: Slowdown, base: Sequence[Curve], lab: Sequence[Curve], k: int, mode: str,
            level: float) -> Slowdown:
    """Per-seed slowdowns of ``lab[i]`` against ``base[i]`` (each smoothed over ``k`` points)
    and their means with t intervals over seeds."""
    per = []
    for (bs, bv), (rs, rv) in zip(base, lab):
        p = _reach(np.asarray(bs), trailing_mean(bv, k), np.asarray(rs), trailing_mean(rv, k),
                   mode)
        per.append((math.inf if p.steps is None else
                    (math.nan if p.slowdown is None else p.slowdown),
                    math.nan if p.equivalent is None else p.equivalent))
    sd.method, sd.n, sd.per_seed = "paired t", len(per), per
    sd.never = sum(1 for x, _ in per if x == math.inf)
    sd.beyond = sum(1 for _, e in per if e == -math.inf)
    for attr, ivattr, vals in (("slowdown", "interval", [x for x, _ in per]),
                               ("equivalent", "eq_interval", [e for _, e in per])):
        if all(math.isfinite(v) for v in vals):
            iv = mean_ci(vals, level)
            setattr(sd, attr, iv.value)
            setattr(sd, ivattr, (iv.lo, iv.hi) if iv.has_interval else None)
        else:
            setattr(sd, attr, None)
            setattr(sd, ivattr, None)
    return sd


def compute_slowdown(baseline_curves: Sequence[Curve], curves: Sequence[Curve], k: int = 1,
                     mode: str = "min", level: float = LEVEL, bootstrap: bool = True,
                     paired: bool = False) -> Slowdown:
    """Slowdown and equivalent slowdown of ``curves`` (seeds of one label) against
    ``baseline_curves``. ``paired``: ``curves[i]`` and ``baseline_curves[i]`` share a seed;
    with at least two such pairs the estimates are the means of the per-seed values with t
    intervals over seeds. Otherwise, with ``bootstrap`` and at least two seeds on each side,
    percentile intervals from resampling the seeds of both labels."""
    base = [c for c in baseline_curves if c is not None and len(c[0])]
    lab = [c for c in curves if c is not None and len(c[0])]
    if not base:
        raise StatsError("baseline has no points for the metric")
    sd = _reach(*_mean_curve(base, k), *_mean_curve(lab, k), mode)
    sd.n = len(lab)
    if paired and len(base) == len(lab) == len(baseline_curves) == len(curves) >= 2:
        return _paired(sd, base, lab, k, mode, level)
    if not (bootstrap and len(base) > 1 and len(lab) > 1):
        return sd
    sd.method = "bootstrap"
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
