"""Loss-curve figures and summary tables for adamrot runs and sweeps.

Usage::

    adamrot report RUN_DIR_OR_SWEEP_DIR [...] --out OUT_DIR
        [--baseline LABEL] [--label-keys K1,K2] [--group-keys K1,K2]
        [--smooth K] [--train-smooth K] [--metric val/loss] [--mode min|max]
        [--band minmax|2sigma]
    python -m adamrot.report ...   (same arguments)

Inputs.  A directory with TensorBoard event files directly inside is a run.
A sweep directory (from ``adamrot sweep``) expands to ``<dir>/<name>`` for the
runs of its ``index.json``; any other directory expands to all directories
below it that hold event files (hidden directories such as ``.attempts`` and
``checkpoints`` are skipped).  Scalars are read with TensorBoard's
``EventAccumulator`` (all points kept; a step logged twice -- e.g. after a
resume -- keeps the last value).  Each run's ``config.yaml`` (LightningCLI's
saved config; ``config.prev.yaml`` as fallback) is flattened to dotted keys
(``model.optimizer.init_args.lr``).

Labels.  ``--label-keys`` / ``--group-keys`` take full dotted keys or
unambiguous short names (``lr``, ``scope``, ``optimizer`` = the
``...optimizer.class_path``).  Default label keys: the config keys whose value
varies across runs, excluding ``seed_everything``, the group keys, path-like
keys (``default_root_dir``, ``ckpt_path``, ``save_dir``, ...), keys whose value
contains the run's directory name, and ``X.init_args.*`` keys that only vary
together with ``X.class_path``.  Runs with the same label (and group) are the
seeds of that label: curves are averaged over them and finals aggregated.
A label is written ``short=value, short=value`` (e.g. ``scope=global, lr=0.003``).

Outputs in ``OUT_DIR``:

* ``loss_curves.png`` (or ``loss_curves_<group>.png``, one per group when
  ``--group-keys`` is given): panels train loss, validation loss (and top-1
  accuracy ``val/acc1`` when logged) vs optimizer step; one line per label =
  seed mean at the steps common to all its seeds (after trailing smoothing:
  ``--train-smooth`` for train, ``--smooth`` for validation panels), shaded
  min--max band over seeds (``--band 2sigma``: mean +- 2 sample std).
* ``summary.md`` / ``summary.csv`` (Markdown also printed to stdout): per label
  the number of seeds, final train loss, final val loss (and final acc1, and
  the final ``--metric`` if it is another tag) as mean +- 2 sigma over seeds,
  where *final* = the value at the last logged step of each seed (raw, not
  smoothed) and sigma = the sample standard deviation (ddof=1; 0 for a single
  seed); plus the slowdown w.r.t. the baseline label.
* ``best_lr.md`` / ``best_lr.csv`` when ``model.optimizer.init_args.lr`` takes
  several values for some setting: for every optimizer (class-path short name)
  and setting (the other label keys and the group keys), the lr with the best
  seed-mean final ``--metric`` (NaN = diverged counts as worst), that value
  (mean +- 2 sigma), the lrs tried and whether the best lr lies at the edge of
  the tried range.

Slowdown (``--metric`` M, default ``val/loss``; *lower is better* unless the
metric name contains ``acc`` or ``--mode max`` is given, in which case every
``<=`` below reads ``>=``):

1. Smooth each run's M curve with a trailing moving average over the last K
   logged evaluation points, ``s_i = mean(v_max(0,i-K+1) .. v_i)``
   (``--smooth K``, default 1 = no smoothing).
2. Average the smoothed curves of a label's seeds at the steps common to all
   of them -> the label's curve ``C(t)``.
3. ``L* = C_base(t_last)``: the baseline's seed-averaged smoothed curve at its
   last common step.
4. ``steps_base`` = the first step t with ``C_base(t) <= L*``;
   ``steps_rot`` = the first step t with ``C_label(t) <= L*``.
5. ``slowdown = steps_rot / steps_base - 1``, written as a percentage
   (``+50.0%``: the label needs 1.5x the baseline's steps); ``never reached``
   when ``C_label`` never gets to ``L*``; ``n/a`` when ``steps_base`` is 0.

Baseline: ``--baseline LABEL`` (the full label, a ``k=v[,k=v]`` subset that
identifies one label, or the bare value(s) such as ``none``); with
``--group-keys`` it is looked up inside every group.  Without it, the label
whose ``rotation.scope`` is ``none`` is the baseline; when several labels
have scope ``none`` (e.g. an lr sweep), each label is compared with the
``none`` label that agrees with it on all other label keys.  Without any
baseline there is no slowdown column.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import yaml

try:  # same naming rules as the sweep tool
    from adamrot.sweep import short_key, short_keys, value_label
except ImportError:  # pragma: no cover - running the file standalone
    from sweep import short_key, short_keys, value_label  # type: ignore

TRAIN_LOSS = "train/loss"
VAL_LOSS = "val/loss"
VAL_ACC1 = "val/acc1"
SEED_KEY = "seed_everything"
LR_KEY = "model.optimizer.init_args.lr"
OPT_CLASS_KEY = "model.optimizer.class_path"
PATHLIKE_LAST = {
    "default_root_dir", "save_dir", "dirpath", "ckpt_path", "log_dir", "logdir",
    "root_dir", "config", "filename", "output_dir", "out_dir",
}
ABSENT = "\0absent"
NEVER = "never reached"


class ReportError(ValueError):
    pass


# --------------------------------------------------------------------------- #
# data
# --------------------------------------------------------------------------- #
@dataclass(eq=False)
class RunData:
    """One training run: flat config and scalar curves ``tag -> (steps, values)``."""

    name: str
    config: dict[str, Any]
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]
    path: str = ""
    status: str | None = None

    def curve(self, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
        for t in (tag, tag + "_step", tag + "_epoch"):
            c = self.scalars.get(t)
            if c is not None and len(c[0]):
                return c
        return None


def make_run(name: str, config: dict[str, Any] | None,
             curves: dict[str, Iterable[tuple[float, float]] | tuple[Sequence, Sequence]],
             path: str = "", status: str | None = None) -> RunData:
    """Build a :class:`RunData` from a nested (or flat) config and curves given as
    ``[(step, value), ...]`` or ``(steps, values)``."""
    sc: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for tag, c in curves.items():
        if isinstance(c, tuple) and len(c) == 2 and not np.isscalar(c[0]):
            steps, vals = c
        else:
            pts = list(c)
            steps = [p[0] for p in pts]
            vals = [p[1] for p in pts]
        sc[tag] = _clean_curve(steps, vals)
    return RunData(name=name, config=flatten_config(config or {}), scalars=sc,
                   path=path, status=status)


def _clean_curve(steps: Sequence, vals: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Sort by step; for repeated steps keep the last value given."""
    d: dict[int, float] = {}
    for s, v in zip(steps, vals):
        d[int(s)] = float(v)
    ks = sorted(d)
    return np.asarray(ks, dtype=np.int64), np.asarray([d[k] for k in ks], dtype=np.float64)


def flatten_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"a.b.c": leaf}`` (lists and empty dicts are leaves)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten_config(v, key))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------- #
# pure numerics
# --------------------------------------------------------------------------- #
def trailing_mean(values: Sequence[float], k: int = 1) -> np.ndarray:
    """``s_i = mean(v[max(0, i-k+1) : i+1])``; ``k <= 1`` returns the values."""
    v = np.asarray(values, dtype=np.float64)
    if k <= 1 or v.size == 0:
        return v.copy()
    c = np.cumsum(np.insert(v, 0, 0.0))
    i = np.arange(1, v.size + 1)
    lo = np.maximum(0, i - k)
    return (c[i] - c[lo]) / (i - lo)


def mean_2sigma(xs: Sequence[float]) -> tuple[float, float, int]:
    """(mean, 2 * sample std (0 for one value), n) of the finite-or-NaN values."""
    a = np.asarray(list(xs), dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan"), 0
    m = float(np.mean(a))
    s = float(np.std(a, ddof=1)) if a.size > 1 else 0.0
    return m, 2.0 * s, int(a.size)


def seed_average(curves: Sequence[tuple[np.ndarray, np.ndarray]], k: int = 1,
                 band: str = "minmax") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Smooth each ``(steps, values)`` curve (trailing mean over ``k`` points), then
    average at the steps common to all curves.  Returns ``steps, mean, lo, hi``
    where lo/hi is the min/max over seeds (``band="minmax"``) or mean -+ 2 sample
    std (``band="2sigma"``)."""
    curves = [c for c in curves if c is not None and len(c[0])]
    if not curves:
        e = np.zeros(0)
        return e.astype(np.int64), e, e, e
    sm = [(np.asarray(s), trailing_mean(v, k)) for s, v in curves]
    common = sm[0][0]
    for s, _ in sm[1:]:
        common = np.intersect1d(common, s)
    if common.size == 0:
        raise ReportError("seed curves have no step in common")
    mat = np.stack([v[np.searchsorted(s, common)] for s, v in sm])
    mean = mat.mean(axis=0)
    if band == "2sigma" and mat.shape[0] > 1:
        sd = mat.std(axis=0, ddof=1)
        lo, hi = mean - 2 * sd, mean + 2 * sd
    else:
        lo, hi = mat.min(axis=0), mat.max(axis=0)
    return common.astype(np.int64), mean, lo, hi


def first_reach(steps: Sequence[int], values: Sequence[float], target: float,
                mode: str = "min") -> int | None:
    """First step whose value is ``<= target`` (``>=`` for mode max), else None."""
    v = np.asarray(values, dtype=np.float64)
    hit = v <= target if mode == "min" else v >= target
    idx = np.flatnonzero(hit)
    return int(np.asarray(steps)[idx[0]]) if idx.size else None


@dataclass
class Slowdown:
    target: float            # L*
    steps_base: int | None   # first step the baseline curve reaches L*
    steps: int | None        # first step the label's curve reaches L*
    slowdown: float | None   # steps / steps_base - 1 ; None = never reached / n/a

    @property
    def text(self) -> str:
        if self.steps is None:
            return NEVER
        if self.slowdown is None:
            return "n/a"
        return f"{100.0 * self.slowdown:+.1f}%"


def compute_slowdown(baseline_curves: Sequence[tuple[np.ndarray, np.ndarray]],
                     curves: Sequence[tuple[np.ndarray, np.ndarray]],
                     k: int = 1, mode: str = "min") -> Slowdown:
    """Slowdown of ``curves`` (seeds of one label) w.r.t. ``baseline_curves``;
    see the module docstring for the definition."""
    bs, bm, _, _ = seed_average(baseline_curves, k)
    if bs.size == 0:
        raise ReportError("baseline has no points for the metric")
    target = float(bm[-1])
    sb = first_reach(bs, bm, target, mode)
    rs, rm, _, _ = seed_average(curves, k)
    sr = first_reach(rs, rm, target, mode) if rs.size else None
    sd = None
    if sr is not None and sb:
        sd = sr / sb - 1.0
    return Slowdown(target=target, steps_base=sb, steps=sr, slowdown=sd)


def final_value(run: RunData, tag: str) -> float | None:
    c = run.curve(tag)
    if c is None:
        return None
    return float(c[1][-1])


# --------------------------------------------------------------------------- #
# labels / grouping (pure)
# --------------------------------------------------------------------------- #
def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _ordered_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    seen = set()
    for c in configs:
        for k in c:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    return keys


def auto_label_keys(runs: Sequence[RunData], exclude: Iterable[str] = ()) -> list[str]:
    """Config keys that vary across runs (see module docstring for exclusions)."""
    exclude = set(exclude) | {SEED_KEY}
    configs = [r.config for r in runs]
    keys = _ordered_keys(configs)
    names = [os.path.basename(os.path.normpath(r.path or r.name)) or r.name for r in runs]

    def names_run(n: str, v: Any) -> bool:  # value is/contains this run's dir name
        return isinstance(v, str) and bool(n) and (
            v == n or v.endswith("/" + n) or f"/{n}/" in v)

    out = []
    for k in keys:
        if k in exclude:
            continue
        if k.split(".")[-1] in PATHLIKE_LAST:
            continue
        vals = [c.get(k, ABSENT) for c in configs]
        if len({_canon(v) for v in vals}) <= 1:
            continue
        if all(names_run(n, v) for n, v in zip(names, vals)):
            continue  # e.g. logger name / version set to the run name
        if ".init_args." in k:
            cp = k[: k.rindex(".init_args.")] + ".class_path"   # the nearest enclosing class
            if cp in keys:
                by_cls: dict[str, set[str]] = {}
                for c, v in zip(configs, vals):
                    by_cls.setdefault(_canon(c.get(cp, ABSENT)), set()).add(_canon(v))
                if all(len(s) == 1 for s in by_cls.values()):
                    continue
        out.append(k)
    return out


def resolve_key(key: str, all_keys: Sequence[str]) -> str:
    """Full dotted key, or a unique short name / dotted suffix of one."""
    key = key.strip().lstrip("-")
    if key in all_keys:
        return key
    if key in ("seed",):
        return SEED_KEY
    cands = [k for k in all_keys if short_key(k) == key]
    if not cands:
        cands = [k for k in all_keys if k.endswith("." + key)]
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise ReportError(f"unknown config key {key!r} (not in any run's config.yaml)")
    raise ReportError(f"ambiguous key {key!r}: matches {', '.join(cands)}")


def _fmt_value(v: Any) -> str:
    return "n/a" if v is ABSENT or v == ABSENT else value_label(v)


def _natural(v: Any) -> tuple:
    if v is None or v == ABSENT:
        return (0, 0, "")
    if isinstance(v, bool):
        return (1, int(v), "")
    if isinstance(v, (int, float)):
        return (1, float(v), "")
    return (2, 0, _canon(v))


@dataclass(eq=False)
class LabelGroup:
    """The seeds of one label within one group."""

    group: str                 # "" when no group keys
    group_values: dict[str, Any]
    label: str
    values: dict[str, Any]     # label key -> value
    runs: list[RunData] = field(default_factory=list)


def label_string(values: dict[str, Any], shorts: dict[str, str]) -> str:
    if not values:
        return "all"
    return ", ".join(f"{shorts[k]}={_fmt_value(v)}" for k, v in values.items())


def group_runs(runs: Sequence[RunData], label_keys: Sequence[str],
               group_keys: Sequence[str] = ()) -> list[LabelGroup]:
    """Partition runs into (group, label) cells, sorted by group then label values."""
    shorts = short_keys(list(label_keys) + [k for k in group_keys if k not in label_keys])
    cells: dict[tuple[str, str], LabelGroup] = {}
    for r in runs:
        gv = {k: r.config.get(k, ABSENT) for k in group_keys}
        lv = {k: r.config.get(k, ABSENT) for k in label_keys}
        g = label_string(gv, shorts) if group_keys else ""
        lab = label_string(lv, shorts)
        cell = cells.get((g, lab))
        if cell is None:
            cell = cells[(g, lab)] = LabelGroup(g, gv, lab, lv)
        cell.runs.append(r)
    return sorted(
        cells.values(),
        key=lambda c: ([_natural(v) for v in c.group_values.values()],
                       [_natural(v) for v in c.values.values()]),
    )


def _scope_key(label_keys: Sequence[str]) -> str | None:
    for k in label_keys:
        if k.endswith("rotation.scope") or short_key(k) == "scope":
            return k
    return None


def _is_none_scope(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null", "identity"))


def match_label(query: str, cells: Sequence[LabelGroup], shorts: dict[str, str]) -> LabelGroup:
    """Find the cell meant by ``query`` among ``cells`` (one group)."""
    q = query.strip()
    norm = lambda s: re.sub(r"\s+", "", s)
    exact = [c for c in cells if c.label == q or norm(c.label) == norm(q)]
    if len(exact) == 1:
        return exact[0]
    # k=v pairs, separated by , or ;
    if "=" in q:
        pairs = []
        for part in re.split(r"[,;]", q):
            if not part.strip():
                continue
            if "=" not in part:
                raise ReportError(f"--baseline {query!r}: cannot parse {part!r} as key=value")
            k, v = part.split("=", 1)
            pairs.append((k.strip(), v.strip()))
        hits = []
        for c in cells:
            ok = True
            for k, v in pairs:
                ks = [lk for lk in c.values if lk == k or shorts.get(lk) == k or lk.endswith("." + k)]
                if not ks or all(_fmt_value(c.values[lk]) != v and str(c.values[lk]) != v for lk in ks):
                    ok = False
                    break
            if ok:
                hits.append(c)
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ReportError(f"--baseline {query!r} is ambiguous: "
                              + "; ".join(h.label for h in hits))
    else:
        hits = [c for c in cells
                if q in ("/".join(_fmt_value(v) for v in c.values.values()),
                         ",".join(_fmt_value(v) for v in c.values.values()))]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ReportError(f"--baseline {query!r} is ambiguous: "
                              + "; ".join(h.label for h in hits))
    raise ReportError(f"--baseline {query!r} matches no label; labels: "
                      + "; ".join(c.label for c in cells))


def assign_baselines(cells: Sequence[LabelGroup], label_keys: Sequence[str],
                     baseline: str | None, shorts: dict[str, str]) -> dict[int, LabelGroup | None]:
    """Map ``id(cell)`` -> its baseline cell (or None)."""
    out: dict[int, LabelGroup | None] = {id(c): None for c in cells}
    groups: dict[str, list[LabelGroup]] = {}
    for c in cells:
        groups.setdefault(c.group, []).append(c)
    errors = []
    for g, gcells in groups.items():
        if baseline is not None:
            try:
                b = match_label(baseline, gcells, shorts)
            except ReportError as e:
                errors.append((g, e))
                continue
            for c in gcells:
                out[id(c)] = b
            continue
        sk = _scope_key(label_keys)
        if sk is None:
            continue
        nones = [c for c in gcells if _is_none_scope(c.values.get(sk))]
        if len(nones) == 1:
            for c in gcells:
                out[id(c)] = nones[0]
        elif len(nones) > 1:
            for c in gcells:
                other = {k: _canon(v) for k, v in c.values.items() if k != sk}
                for b in nones:
                    if {k: _canon(v) for k, v in b.values.items() if k != sk} == other:
                        out[id(c)] = b
                        break
    if baseline is not None and errors:
        if len(errors) == len(groups):
            raise errors[0][1]
        for g, e in errors:
            warnings.warn(f"group {g!r}: {e}; no slowdown there")
    return out


def metric_mode(metric: str, mode: str | None = None) -> str:
    if mode:
        if mode not in ("min", "max"):
            raise ReportError(f"--mode must be min or max, got {mode!r}")
        return mode
    return "max" if "acc" in metric.lower() else "min"


# --------------------------------------------------------------------------- #
# summary (pure)
# --------------------------------------------------------------------------- #
def _col(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", tag).strip("_")


@dataclass
class Summary:
    cells: list[LabelGroup]
    label_keys: list[str]
    group_keys: list[str]
    shorts: dict[str, str]
    metric: str
    mode: str
    smooth: int
    rows: list[dict[str, Any]]          # numeric, one per cell (same order)
    columns: list[str]                  # CSV columns
    baselines: dict[int, LabelGroup | None]
    has_acc: bool
    has_slowdown: bool
    notes: list[str] = field(default_factory=list)


def summarize(runs: Sequence[RunData], label_keys: Sequence[str] | None = None,
              group_keys: Sequence[str] = (), baseline: str | None = None,
              smooth: int = 1, metric: str = VAL_LOSS, mode: str | None = None) -> Summary:
    """Aggregate runs into the per-label summary table (numbers unformatted)."""
    if not runs:
        raise ReportError("no runs")
    all_keys = _ordered_keys([r.config for r in runs])
    group_keys = [resolve_key(k, all_keys) for k in group_keys]
    if label_keys is None:
        label_keys = auto_label_keys(runs, exclude=group_keys)
    else:
        label_keys = [resolve_key(k, all_keys) for k in label_keys]
    label_keys = [k for k in label_keys if k not in group_keys]
    mode = metric_mode(metric, mode)
    shorts = short_keys(list(label_keys) + [k for k in group_keys if k not in label_keys])
    cells = group_runs(runs, label_keys, group_keys)
    bmap = assign_baselines(cells, label_keys, baseline, shorts)
    # baselines first within each group, order otherwise kept
    base_ids = {id(b) for b in bmap.values() if b is not None}
    order = {id(c): i for i, c in enumerate(cells)}
    cells.sort(key=lambda c: (
        [_natural(v) for v in c.group_values.values()],
        0 if id(c) in base_ids else 1, order[id(c)]))

    has_acc = any(r.curve(VAL_ACC1) is not None for r in runs)
    extra_metric = metric not in (TRAIN_LOSS, VAL_LOSS, VAL_ACC1)
    has_slowdown = any(b is not None for b in bmap.values())
    notes: list[str] = []
    gcols = [shorts[k] for k in group_keys]
    columns = gcols + ["label", "n_seeds", "seeds",
                       "final_train_loss_mean", "final_train_loss_2sigma",
                       "final_val_loss_mean", "final_val_loss_2sigma"]
    if has_acc:
        columns += ["final_acc1_mean", "final_acc1_2sigma"]
    if extra_metric:
        columns += [f"final_{_col(metric)}_mean", f"final_{_col(metric)}_2sigma"]
    if has_slowdown:
        columns += ["baseline", "target", "baseline_steps", "steps_to_target",
                    "slowdown_pct", "slowdown"]
    rows = []
    for c in cells:
        row: dict[str, Any] = {shorts[k]: _fmt_value(c.group_values[k]) for k in group_keys}
        row["label"] = c.label
        row["n_seeds"] = len(c.runs)
        row["seeds"] = ";".join(str(r.config.get(SEED_KEY, "?")) for r in c.runs)
        specs = [("final_train_loss", TRAIN_LOSS), ("final_val_loss", VAL_LOSS)]
        if has_acc:
            specs.append(("final_acc1", VAL_ACC1))
        if extra_metric:
            specs.append((f"final_{_col(metric)}", metric))
        for name, tag in specs:
            vals = [final_value(r, tag) for r in c.runs]
            vals = [v for v in vals if v is not None]
            m, s2, _ = mean_2sigma(vals)
            row[name + "_mean"] = m if vals else None
            row[name + "_2sigma"] = s2 if vals else None
        lasts = {int(r.curve(metric)[0][-1]) for r in c.runs if r.curve(metric) is not None}
        if len(lasts) > 1:
            notes.append(f"{c.label}{' [' + c.group + ']' if c.group else ''}: seeds end at "
                         f"different steps {sorted(lasts)} (curves averaged over common steps)")
        unfinished = [r.name for r in c.runs if r.status not in (None, "finished")]
        if unfinished:
            notes.append(f"{c.label}: run(s) not finished: {', '.join(unfinished)}")
        if has_slowdown:
            b = bmap.get(id(c))
            row.update(baseline=None, target=None, baseline_steps=None,
                       steps_to_target=None, slowdown_pct=None, slowdown="")
            if b is not None:
                bc = [r.curve(metric) for r in b.runs]
                rc = [r.curve(metric) for r in c.runs]
                if not any(x is not None for x in rc):
                    row.update(baseline=b.label, slowdown="no data")
                elif any(x is not None for x in bc):
                    try:
                        sd = compute_slowdown([x for x in bc if x is not None],
                                              [x for x in rc if x is not None], smooth, mode)
                    except ReportError as e:
                        notes.append(f"{c.label}: no slowdown ({e})")
                        row.update(baseline=b.label, slowdown="n/a")
                        rows.append(row)
                        continue
                    row.update(baseline=b.label, target=sd.target,
                               baseline_steps=sd.steps_base, steps_to_target=sd.steps,
                               slowdown_pct=None if sd.slowdown is None else 100.0 * sd.slowdown,
                               slowdown="baseline" if b is c else sd.text)
        rows.append(row)
    return Summary(cells=cells, label_keys=list(label_keys), group_keys=list(group_keys),
                   shorts=shorts, metric=metric, mode=mode, smooth=smooth, rows=rows,
                   columns=columns, baselines=bmap, has_acc=has_acc,
                   has_slowdown=has_slowdown, notes=notes)


def _pm(m: float | None, s: float | None, nd: int = 4) -> str:
    if m is None:
        return "-"
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return f"{m:.{nd}f}"
    return f"{m:.{nd}f} ± {s:.{nd}f}"


def summary_markdown(s: Summary) -> str:
    gcols = [s.shorts[k] for k in s.group_keys]
    head = gcols + ["label", "seeds", "final train loss", "final val loss"]
    if s.has_acc:
        head.append("final acc@1")
    extra = f"final_{_col(s.metric)}" if s.metric not in (TRAIN_LOSS, VAL_LOSS, VAL_ACC1) else None
    if extra:
        head.append(f"final {s.metric}")
    if s.has_slowdown:
        head += ["L*", "steps to L*", "slowdown"]
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    for r in s.rows:
        cells = [str(r[c]) for c in gcols] + [r["label"], str(r["n_seeds"]),
                 _pm(r["final_train_loss_mean"], r["final_train_loss_2sigma"]),
                 _pm(r["final_val_loss_mean"], r["final_val_loss_2sigma"])]
        if s.has_acc:
            cells.append(_pm(r["final_acc1_mean"], r["final_acc1_2sigma"]))
        if extra:
            cells.append(_pm(r[extra + "_mean"], r[extra + "_2sigma"]))
        if s.has_slowdown:
            if r["baseline"] is None or r["target"] is None:
                cells += ["-", "-", r["slowdown"] or "-"]
            else:
                cells += [f"{r['target']:.4f}",
                          NEVER if r["steps_to_target"] is None else str(r["steps_to_target"]),
                          r["slowdown"]]
        lines.append(_md_row(cells))
    return "\n".join(lines) + "\n"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


# --------------------------------------------------------------------------- #
# best lr (pure)
# --------------------------------------------------------------------------- #
@dataclass
class BestLR:
    rows: list[dict[str, Any]]
    columns: list[str]
    metric: str
    group_cols: list[str] = field(default_factory=list)


def best_lr_table(runs: Sequence[RunData], label_keys: Sequence[str],
                  group_keys: Sequence[str] = (), metric: str = VAL_LOSS,
                  mode: str | None = None, lr_key: str = LR_KEY,
                  opt_key: str = OPT_CLASS_KEY) -> BestLR | None:
    """Best seed-mean final ``metric`` and its lr per (optimizer, setting);
    None unless some (optimizer, setting) was run with more than one lr."""
    mode = metric_mode(metric, mode)
    if not any(lr_key in r.config for r in runs):
        return None
    group_keys = [k for k in group_keys if k not in (lr_key, opt_key)]  # optimizer: own column
    other = [k for k in label_keys if k not in (lr_key, opt_key) and k not in group_keys]
    shorts = short_keys(list(other) + list(group_keys))
    cells: dict[tuple, dict[str, Any]] = {}
    for r in runs:
        if lr_key not in r.config:
            continue
        opt = _fmt_value(r.config.get(opt_key, ABSENT)) if opt_key in r.config else "optimizer"
        gv = {k: r.config.get(k, ABSENT) for k in group_keys}
        ov = {k: r.config.get(k, ABSENT) for k in other}
        key = (_canon(gv), opt, _canon(ov))
        c = cells.setdefault(key, {"gv": gv, "opt": opt, "ov": ov, "by_lr": {}})
        c["by_lr"].setdefault(float(r.config[lr_key]), []).append(r)
    if not any(len(c["by_lr"]) > 1 for c in cells.values()):
        return None
    gcols = [shorts[k] for k in group_keys]
    columns = gcols + ["optimizer", "setting", "best_lr", "best_mean", "best_2sigma",
                       "n_seeds", "lrs_tried", "at_edge", "all"]
    rows = []
    for c in sorted(cells.values(), key=lambda c: (
            [_natural(v) for v in c["gv"].values()], c["opt"],
            [_natural(v) for v in c["ov"].values()])):
        per_lr = []
        for lr in sorted(c["by_lr"]):
            vals = [final_value(r, metric) for r in c["by_lr"][lr]]
            vals = [v for v in vals if v is not None]
            m, s2, n = mean_2sigma(vals)
            per_lr.append((lr, m, s2, n))
        def score(t):
            m = t[1]
            if m is None or math.isnan(m):
                return math.inf
            return m if mode == "min" else -m
        best = min(per_lr, key=score)
        lrs = [t[0] for t in per_lr]
        row = {shorts[k]: _fmt_value(c["gv"][k]) for k in group_keys}
        row.update(
            optimizer=c["opt"],
            setting=label_string(c["ov"], shorts) if c["ov"] else "",
            best_lr=best[0], best_mean=best[1], best_2sigma=best[2], n_seeds=best[3],
            lrs_tried=";".join(value_label(x) for x in lrs),
            at_edge=(len(lrs) > 1 and best[0] in (lrs[0], lrs[-1])),
            all="; ".join(f"{value_label(t[0])}: {t[1]:.4f}" for t in per_lr),
        )
        rows.append(row)
    return BestLR(rows=rows, columns=columns, metric=metric, group_cols=gcols)


def best_lr_markdown(b: BestLR, group_cols: Sequence[str] | None = None) -> str:
    group_cols = b.group_cols if group_cols is None else group_cols
    head = list(group_cols) + ["optimizer", "setting", "best lr", f"final {b.metric}",
                               "seeds", "lrs tried", "note"]
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    for r in b.rows:
        lines.append(_md_row([str(r[c]) for c in group_cols] + [
            r["optimizer"], r["setting"] or "-", value_label(r["best_lr"]),
            _pm(r["best_mean"], r["best_2sigma"]), str(r["n_seeds"]),
            r["lrs_tried"].replace(";", ", "),
            "best lr at edge of grid" if r["at_edge"] else ""]))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- #
# IO: reading
# --------------------------------------------------------------------------- #
def _has_events(d: Path) -> bool:
    try:
        return any("tfevents" in p.name and p.is_file() for p in d.iterdir())
    except OSError:
        return False


def find_event_dirs(root: Path) -> list[Path]:
    """``root`` if it has event files, else every directory below it that has
    (hidden dirs and ``checkpoints`` skipped), sorted."""
    if _has_events(root):
        return [root]
    out = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "checkpoints")
        p = Path(dirpath)
        if _has_events(p):
            out.append(p)
            dirnames[:] = []
    return out


def expand_inputs(paths: Sequence[str | os.PathLike]) -> list[tuple[Path, Path, str | None]]:
    """-> ``[(event_dir, run_root, status)]`` for run / sweep / parent directories."""
    out: list[tuple[Path, Path, str | None]] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ReportError(f"not a directory: {p}")
        if _has_events(p):
            out.append((p, p, None))
            continue
        idx = p / "index.json"
        if idx.is_file():
            with open(idx, encoding="utf-8") as f:
                index = json.load(f)
            for e in index.get("runs", []):
                d = p / e["name"]
                ev = find_event_dirs(d) if d.is_dir() else []
                if not ev:
                    warnings.warn(f"{d}: no TensorBoard event files (status "
                                  f"{e.get('status')}); skipped")
                    continue
                out.extend((x, d, e.get("status")) for x in ev)
            continue
        ev = find_event_dirs(p)
        if not ev:
            warnings.warn(f"{p}: no TensorBoard event files found; skipped")
        out.extend((x, x, None) for x in ev)
    return out


def read_scalars(event_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All scalar tags of the event files in ``event_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(event_dir), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    out = {}
    for tag in tags.get("scalars", []):
        evs = ea.Scalars(tag)
        out[tag] = _clean_curve([e.step for e in evs], [e.value for e in evs])
    # TF2-style scalar summaries (stored as tensors with the "scalars" plugin)
    for tag in tags.get("tensors", []):
        if tag in out:
            continue
        try:
            if ea.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
                continue
            from tensorboard.util import tensor_util

            evs = ea.Tensors(tag)
            vals = [float(tensor_util.make_ndarray(e.tensor_proto).item()) for e in evs]
        except Exception:  # not a scalar after all
            continue
        out[tag] = _clean_curve([e.step for e in evs], vals)
    return out


def read_config(event_dir: Path, run_root: Path | None = None) -> dict[str, Any] | None:
    """Flattened ``config.yaml`` from ``event_dir`` or its parents up to ``run_root``."""
    d = event_dir.resolve()
    stop = (run_root or event_dir).resolve()
    while True:
        for name in ("config.yaml", "config.prev.yaml"):
            f = d / name
            if f.is_file():
                with open(f, encoding="utf-8") as fh:
                    cfg = yaml.safe_load(fh) or {}
                return flatten_config(cfg) if isinstance(cfg, dict) else None
        if d == stop or d.parent == d or stop not in d.parents:
            return None
        d = d.parent


def load_runs(paths: Sequence[str | os.PathLike]) -> list[RunData]:
    runs = []
    for ev, root, status in expand_inputs(paths):
        cfg = read_config(ev, root)
        name = root.name if ev == root else f"{root.name}/{ev.relative_to(root)}"
        if cfg is None:
            warnings.warn(f"{ev}: no config.yaml; labelled by directory name")
            cfg = {"run": name}
        runs.append(RunData(name=name, config=cfg, scalars=read_scalars(ev),
                            path=str(root), status=status))
    if not runs:
        raise ReportError("no runs with TensorBoard event files found in "
                          + ", ".join(map(str, paths)))
    return runs


# --------------------------------------------------------------------------- #
# IO: plotting + writing
# --------------------------------------------------------------------------- #
def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", s).strip("_") or "group"


def plot_group(cells: Sequence[LabelGroup], out_path: str | os.PathLike, *,
               title: str = "", smooth: int = 1, train_smooth: int = 1,
               band: str = "minmax", colors: dict[str, Any] | None = None,
               targets: Sequence[float] = ()) -> None:
    """Fig.-1-style panels (train loss, val loss, [val acc1]) vs step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(TRAIN_LOSS, "train loss", train_smooth), (VAL_LOSS, "validation loss", smooth)]
    if any(r.curve(VAL_ACC1) is not None for c in cells for r in c.runs):
        panels.append((VAL_ACC1, "top-1 accuracy", smooth))
    fig = Figure(figsize=(5.0 * len(panels), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (tag, name, k) in zip(axes, panels):
        for i, c in enumerate(cells):
            curves = [r.curve(tag) for r in c.runs]
            curves = [x for x in curves if x is not None]
            if not curves:
                continue
            try:
                s, m, lo, hi = seed_average(curves, k, band)
            except ReportError:
                continue
            col = (colors or {}).get(c.label, f"C{i % 10}")
            n = len(curves)
            ax.plot(s, m, color=col, lw=1.5, label=f"{c.label}" + (f" (n={n})" if n > 1 else ""))
            if n > 1:
                ax.fill_between(s, lo, hi, color=col, alpha=0.2, lw=0)
        if tag == VAL_LOSS:
            for t in targets:
                ax.axhline(t, color="0.4", ls=":", lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.set_title(name + (f" (smoothed, K={k})" if k > 1 else ""))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        axes[-1].legend(handles, labels, fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
    fig.savefig(str(out_path), dpi=120)


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        out = []
        for c in columns:
            v = r.get(c)
            if v is None:
                out.append("")
            elif isinstance(v, float):
                out.append(repr(v))
            else:
                out.append(v)
        w.writerow(out)
    path.write_text(buf.getvalue(), encoding="utf-8")


def definition_text(s: Summary) -> str:
    cmp = "<=" if s.mode == "min" else ">="
    return (f"Slowdown: smooth each {s.metric} curve with a trailing mean over K={s.smooth} "
            f"eval points and average the seeds at their common steps; L* = the final value of "
            f"the baseline's smoothed seed-averaged curve; "
            f"steps = first step with curve {cmp} L*; slowdown = steps_label / steps_baseline - 1. "
            f"Final values are the last logged value per seed, shown as mean ± 2σ (sample std).")


def write_report(runs: Sequence[RunData], out_dir: str | os.PathLike, *,
                 label_keys: Sequence[str] | None = None, group_keys: Sequence[str] = (),
                 baseline: str | None = None, smooth: int = 1, train_smooth: int | None = None,
                 metric: str = VAL_LOSS, mode: str | None = None, band: str = "minmax",
                 sources: Sequence[str] = (), stream=None) -> Summary:
    """Compute everything, write the files, print the tables to ``stream``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(runs, label_keys, group_keys, baseline, smooth, metric, mode)
    bl = best_lr_table(runs, s.label_keys, s.group_keys, metric, mode)

    # figures
    all_labels: list[str] = []
    for c in s.cells:
        if c.label not in all_labels:
            all_labels.append(c.label)
    colors = {lab: f"C{i % 10}" for i, lab in enumerate(all_labels)}
    groups: dict[str, list[LabelGroup]] = {}
    for c in s.cells:
        groups.setdefault(c.group, []).append(c)
    pngs = []
    for g, cells in groups.items():
        bases = {id(s.baselines[id(c)]) for c in cells if s.baselines.get(id(c)) is not None}
        targets = []
        if len(bases) == 1 and metric == VAL_LOSS:
            ids = {id(c) for c in cells}
            targets = [r["target"] for r, c in zip(s.rows, s.cells)
                       if id(c) in ids and r.get("target") is not None][:1]
        name = "loss_curves.png" if not s.group_keys else f"loss_curves_{_slug(g)}.png"
        plot_group(cells, out / name, title=g, smooth=smooth,
                   train_smooth=smooth if train_smooth is None else train_smooth,
                   band=band, colors=colors, targets=targets)
        pngs.append(name)

    # tables
    md = summary_markdown(s)
    _write_csv(out / "summary.csv", s.columns, s.rows)
    doc = ["# adamrot report", ""]
    if sources:
        doc.append("Sources: " + ", ".join(f"`{x}`" for x in sources) + f" ({len(runs)} runs)")
        doc.append("")
    doc.append("Label keys: " + (", ".join(f"`{k}`" for k in s.label_keys) or "(none)")
               + ("; group keys: " + ", ".join(f"`{k}`" for k in s.group_keys)
                  if s.group_keys else ""))
    doc += ["", definition_text(s), "", md]
    if s.notes:
        doc += ["Notes:", ""] + [f"- {n}" for n in s.notes] + [""]
    doc += [f"![loss curves]({p})" for p in pngs] + [""]
    (out / "summary.md").write_text("\n".join(doc), encoding="utf-8")

    stream = sys.stdout if stream is None else stream
    print(md, file=stream)
    if bl is not None:
        bmd = best_lr_markdown(bl)
        _write_csv(out / "best_lr.csv", bl.columns, bl.rows)
        (out / "best_lr.md").write_text(
            f"# Best learning rate per optimizer\n\nCriterion: final {metric} "
            f"({'lowest' if metric_mode(metric, mode) == 'min' else 'highest'} seed mean).\n\n"
            + bmd, encoding="utf-8")
        print(bmd, file=stream)
    for n in s.notes:
        print(f"note: {n}", file=sys.stderr)
    return s


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #
def _keys_arg(v: str | None) -> list[str] | None:
    if v is None:
        return None
    return [x for x in re.split(r"[,\s]+", v) if x]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adamrot report",
        description="Loss curves + summary tables (with slowdown vs a baseline) for runs/sweeps.",
        epilog="The slowdown definition is in the module docstring of adamrot.report.",
    )
    p.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_SWEEP_DIR")
    p.add_argument("--out", required=True, metavar="OUT_DIR")
    p.add_argument("--baseline", default=None, metavar="LABEL",
                   help="baseline label (e.g. 'scope=none'); default: the scope=none label")
    p.add_argument("--label-keys", default=None, metavar="K1,K2",
                   help="config keys that define a line (default: keys that vary, minus seed)")
    p.add_argument("--group-keys", default=None, metavar="K1,K2",
                   help="config keys that split runs into groups (one figure each)")
    p.add_argument("--smooth", type=int, default=1, metavar="K",
                   help="trailing moving average over K eval points (1 = none)")
    p.add_argument("--train-smooth", type=int, default=None, metavar="K",
                   help="smoothing of the train-loss panel (default: --smooth)")
    p.add_argument("--metric", default=VAL_LOSS, help="metric for slowdown / best lr")
    p.add_argument("--mode", choices=("min", "max"), default=None,
                   help="whether lower or higher metric is better (default: max iff 'acc' in name)")
    p.add_argument("--band", choices=("minmax", "2sigma"), default="minmax",
                   help="shaded band over seeds")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.smooth < 1 or (args.train_smooth is not None and args.train_smooth < 1):
        print("adamrot report: --smooth/--train-smooth must be >= 1", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = (lambda message, *a, **k:
                                    print(f"warning: {message}", file=sys.stderr))
            runs = load_runs(args.paths)
            write_report(runs, args.out, label_keys=_keys_arg(args.label_keys),
                         group_keys=_keys_arg(args.group_keys) or (), baseline=args.baseline,
                         smooth=args.smooth, train_smooth=args.train_smooth,
                         metric=args.metric, mode=args.mode, band=args.band,
                         sources=[str(p) for p in args.paths])
    except ReportError as e:
        print(f"adamrot report: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/summary.md, summary.csv and figures", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
