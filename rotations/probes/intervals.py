"""Confidence intervals for probe estimates that average over sampled Hessian rows (and random
directions per row), and how many rows / directions an interval needs to exclude a value
(docs/CONVENTIONS.md §6). Pure Python; Student-t quantiles are exact for integer degrees of
freedom (closed-form CDF, bisection)."""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Optional, Sequence

LEVEL = 0.95
_MAX_N = 10**9


def t_two_sided(t: float, df: int) -> float:
    """``P(|T| <= t)`` for Student's t with integer ``df >= 1`` (Abramowitz & Stegun 26.7.3-4);
    the normal limit with the first Cornish-Fisher terms above 1000 degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    t = abs(t)
    if df > 1000:
        z = t - (t ** 3 + t) / (4 * df)               # inverse of t ≈ z + (z³ + z)/(4ν)
        return 2 * NormalDist().cdf(z) - 1
    th = math.atan(t / math.sqrt(df))
    c2, s = math.cos(th) ** 2, math.sin(th)
    if df % 2 == 0:
        term = acc = 1.0
        for k in range(1, (df - 2) // 2 + 1):
            term *= (2 * k - 1) / (2 * k) * c2
            acc += term
        return s * acc
    if df == 1:
        return 2 * th / math.pi
    term = acc = math.cos(th)
    for k in range(1, (df - 3) // 2 + 1):
        term *= (2 * k) / (2 * k + 1) * c2
        acc += term
    return 2 / math.pi * (th + s * acc)


def t_quantile(p: float, df: int) -> float:
    """The ``p``-quantile of Student's t with integer ``df`` (``p`` in (0, 1))."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    target = 2 * p - 1
    hi = 1.0
    while t_two_sided(hi, df) < target:
        hi *= 2
    lo = 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_two_sided(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


def _t(level: float, df: int) -> float:
    return t_quantile(0.5 + level / 2, df)


def _mean_var(xs: Sequence[float]) -> tuple[float, Optional[float]]:
    n = len(xs)
    mean = math.fsum(xs) / n
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else None
    return mean, var


def mean_interval(xs: Sequence[float], level: float = LEVEL) -> dict:
    """Mean of ``xs`` with its two-sided Student-t interval: ``mean ± t_{n-1} sd / √n``.

    Keys ``mean, sd, n, se, half_width, lo, hi, level``; with one value the spread keys are
    ``None``."""
    xs = [float(x) for x in xs]
    if not xs:
        raise ValueError("mean_interval: no values")
    n = len(xs)
    mean, var = _mean_var(xs)
    out = {"mean": mean, "n": n, "level": level, "sd": None, "se": None,
           "half_width": None, "lo": None, "hi": None}
    if var is not None:
        sd = math.sqrt(var)
        se = sd / math.sqrt(n)
        h = _t(level, n - 1) * se
        out.update(sd=sd, se=se, half_width=h, lo=mean - h, hi=mean + h)
    return out


def nested_interval(groups: Sequence[Sequence[float]], level: float = LEVEL) -> dict:
    """Interval of the grand mean of ``groups`` (one group of ``M`` values per sampled row, e.g.
    its contributions along ``M`` random directions): the rows are the independent draws, so
    the interval is :func:`mean_interval` of the per-row means (exact for a balanced one-way
    random-effects design). Adds the variance components ``sd_between_rows`` (of the rows'
    true means) and ``sd_within_row`` (pooled, over directions) and ``directions = M``."""
    groups = [[float(x) for x in g] for g in groups]
    if not groups or any(not g for g in groups):
        raise ValueError("nested_interval: every row needs at least one value")
    sizes = {len(g) for g in groups}
    if len(sizes) != 1:
        raise ValueError(f"nested_interval: rows have different numbers of values {sorted(sizes)}")
    m = sizes.pop()
    means = [math.fsum(g) / m for g in groups]
    out = mean_interval(means, level)
    within = None
    if m > 1:
        within = math.fsum(_mean_var(g)[1] for g in groups) / len(groups)
    between = None
    if out["sd"] is not None:
        between = max(0.0, out["sd"] ** 2 - (within or 0.0) / m)
    out.update(directions=m,
               sd_within_row=None if within is None else math.sqrt(within),
               sd_between_rows=None if between is None else math.sqrt(between))
    return out


def stratified_interval(strata: dict, sizes: dict, level: float = LEVEL) -> dict:
    """Interval of a population mean from per-stratum samples: ``Σ_t w_t m_t`` with
    ``w_t = sizes[t] / Σ sizes`` (e.g. rows sampled per parameter type, weighted by the type's
    number of coordinates), variance ``Σ w_t² s_t² / n_t``, Welch–Satterthwaite degrees of
    freedom (rounded down). Without two values in every stratum the spread keys are ``None``."""
    if set(strata) != set(sizes) or not strata:
        raise ValueError(f"stratified_interval: strata {sorted(strata)} != sizes {sorted(sizes)}")
    total = float(sum(sizes.values()))
    w = {t: sizes[t] / total for t in strata}
    parts = {t: mean_interval(xs, level) for t, xs in strata.items()}
    mean = math.fsum(w[t] * parts[t]["mean"] for t in strata)
    out = {"mean": mean, "n": sum(p["n"] for p in parts.values()), "level": level,
           "se": None, "half_width": None, "lo": None, "hi": None, "df": None,
           "weights": w}
    if any(p["se"] is None for p in parts.values()):
        return out
    terms = {t: (w[t] * parts[t]["se"]) ** 2 for t in strata}
    var = math.fsum(terms.values())
    if var == 0:
        out.update(se=0.0, half_width=0.0, lo=mean, hi=mean, df=out["n"] - len(strata))
        return out
    den = math.fsum(v * v / (parts[t]["n"] - 1) for t, v in terms.items())
    df = max(1, math.floor(var * var / den))
    h = _t(level, df) * math.sqrt(var)
    out.update(se=math.sqrt(var), half_width=h, lo=mean - h, hi=mean + h, df=df)
    return out


def excludes(iv: dict, value: float = 0.0) -> Optional[bool]:
    """Whether the interval lies wholly on one side of ``value`` (``None``: no interval)."""
    if iv.get("lo") is None:
        return None
    return iv["lo"] > value or iv["hi"] < value


def rows_needed(gap: float, sd: Optional[float], level: float = LEVEL) -> Optional[int]:
    """Smallest ``n >= 2`` with ``t_{n-1} · sd / √n < |gap|``: the sample size at which an
    interval of this spread around a mean ``gap`` away from a value excludes it. ``None`` when
    ``gap = 0`` or the spread is unknown."""
    if sd is None or gap == 0 or math.isnan(gap) or math.isnan(sd):
        return None
    gap = abs(gap)
    if sd == 0:
        return 2

    def ok(n: int) -> bool:
        return _t(level, n - 1) * sd / math.sqrt(n) < gap

    z = NormalDist().inv_cdf(0.5 + level / 2)
    n = max(2, min(_MAX_N, math.ceil((z * sd / gap) ** 2)))
    while not ok(n) and n < _MAX_N:
        n = min(_MAX_N, n + max(1, n // 50))
    while n > 2 and ok(n - 1):
        n -= 1
    return n if ok(n) else None


def directions_needed(gap: float, sd_between: Optional[float], sd_within: Optional[float],
                      rows: int, level: float = LEVEL) -> Optional[int]:
    """Smallest ``M`` with ``t_{N-1} · sqrt((σ_b² + σ_w²/M) / N) < |gap|`` at ``N = rows``;
    ``None`` when no number of directions suffices at ``N`` rows (``σ_b`` alone is too wide)
    or the components are unknown."""
    if sd_between is None or sd_within is None or rows < 2 or gap == 0:
        return None
    room = gap * gap * rows / _t(level, rows - 1) ** 2 - sd_between ** 2
    if room <= 0:
        return None
    return max(1, math.floor(sd_within ** 2 / room) + 1)


def evidence(iv: dict, value: float = 0.0, level: float = LEVEL) -> dict:
    """``iv`` plus whether it excludes ``value`` and the rows (and, for a nested interval,
    directions) needed for it to, at the estimated spread."""
    out = dict(iv, excludes=excludes(iv, value), value=value)
    gap = iv["mean"] - value
    if "directions" in iv and iv["sd_between_rows"] is not None:
        sb, sw, m = iv["sd_between_rows"], iv["sd_within_row"] or 0.0, iv["directions"]
        out["rows_needed"] = rows_needed(gap, math.sqrt(sb ** 2 + sw ** 2 / m), level)
        out["rows_needed_any_directions"] = rows_needed(gap, sb, level) if sb > 0 else 2
        out["directions_needed"] = directions_needed(gap, sb, iv["sd_within_row"], iv["n"],
                                                     level)
    else:
        out["rows_needed"] = rows_needed(gap, iv["sd"], level)
    return out


def difference_interval(a: dict, b: dict, level: float = LEVEL) -> dict:
    """Welch interval of ``a.mean − b.mean`` for two independent :func:`mean_interval` results
    (degrees of freedom Welch–Satterthwaite, rounded down), with the rows per side needed for
    it to exclude 0 at these spreads (equal rows on both sides)."""
    d = a["mean"] - b["mean"]
    out = {"mean": d, "level": level, "lo": None, "hi": None, "half_width": None,
           "excludes": None, "rows_needed": None}
    if a["se"] is None or b["se"] is None:
        return out
    va, vb = a["se"] ** 2, b["se"] ** 2
    se = math.sqrt(va + vb)
    den = (va * va / (a["n"] - 1) if va else 0.0) + (vb * vb / (b["n"] - 1) if vb else 0.0)
    df = max(1, math.floor((va + vb) ** 2 / den)) if den > 0 else a["n"] + b["n"] - 2
    h = _t(level, df) * se
    out.update(se=se, df=df, half_width=h, lo=d - h, hi=d + h)
    out["excludes"] = out["lo"] > 0 or out["hi"] < 0
    out["rows_needed"] = rows_needed_two_sample(d, a["sd"], b["sd"], level)
    return out


def rows_needed_two_sample(gap: float, sd_a: float, sd_b: float,
                           level: float = LEVEL) -> Optional[int]:
    """Smallest ``n`` (rows on each side) with ``t_df · sqrt((sd_a² + sd_b²)/n) < |gap|``, ``df``
    Welch's for equal ``n``."""
    if gap == 0:
        return None
    s2 = sd_a ** 2 + sd_b ** 2
    if s2 == 0:
        return 2
    q = (sd_a ** 4 + sd_b ** 4) / (s2 * s2)

    def ok(n: int) -> bool:
        df = max(1, math.floor((n - 1) / q))
        return _t(level, df) * math.sqrt(s2 / n) < abs(gap)

    z = NormalDist().inv_cdf(0.5 + level / 2)
    n = max(2, min(_MAX_N, math.ceil(z * z * s2 / gap ** 2)))
    while not ok(n) and n < _MAX_N:
        n = min(_MAX_N, n + max(1, n // 50))
    while n > 2 and ok(n - 1):
        n -= 1
    return n if ok(n) else None
