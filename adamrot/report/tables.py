"""The report's tables: per label final values with intervals and the comparison with its
baseline (difference, slowdown, equivalent slowdown), and the best learning rate per optimizer.

Numbers are kept unformatted in ``Summary.rows`` / ``BestLR.rows`` (the CSV files); the
Markdown renderers format them. Definitions: docs/CONVENTIONS.md §6.
"""
from __future__ import annotations

import csv
import io
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

from adamrot.runs import canon
from adamrot.sweep import short_keys

from .events import ReportError, RunData
from .labels import (SEED_KEY, LabelGroup, assign_baselines, auto_label_keys, fmt_value,
                     group_runs, metric_mode, natural, ordered_keys, resolve_key, with_configs)
from .significance import holm, seeds_for_equivalence, seeds_for_power, tost
from .stats import (LEVEL, NEVER, Interval, StatsError, compute_slowdown, diff_ci,
                    interval_text, last_fraction_improvement, mean_ci, seed_average)

TRAIN_LOSS, VAL_LOSS, VAL_ACC1 = "train/loss", "val/loss", "val/acc1"
FLAT_FRACTION, FLAT_TOLERANCE = 0.2, 0.02    # "flattened": last 20 % of steps improve < 2 %
TRUNC = "†"
ALPHA, POWER = 0.05, 0.8     # family-wise level of the Holm column and TOST; power of "seeds"


def col(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", tag).strip("_")


def final_value(run: RunData, tag: str) -> float | None:
    c = run.curve(tag)
    return None if c is None else float(c[1][-1])


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
    finals: list[tuple[str, str]]       # (column stem, tag) of the final-value columns
    has_slowdown: bool
    notes: list[str] = field(default_factory=list)
    margin: float | None = None         # the TOST margin (None: no equivalence column)

    @property
    def has_acc(self) -> bool:
        return any(tag == VAL_ACC1 for _, tag in self.finals)


def _paired_seeds(a: LabelGroup, b: LabelGroup) -> list[tuple[RunData, RunData]] | None:
    """Runs of ``a`` and ``b`` matched by seed when both have the same distinct seeds."""
    sa, sb = a.seeds, b.seeds
    if None in sa or len(set(map(canon, sa))) != len(sa) or len(sa) < 2:
        return None
    if sorted(map(canon, sa)) != sorted(map(canon, sb)) or len(sb) != len(sa):
        return None
    by = {canon(r.config.get(SEED_KEY)): r for r in b.runs}
    return [(r, by[canon(r.config.get(SEED_KEY))]) for r in a.runs]


@dataclass(frozen=True)
class Comparison:
    """A difference of final values with what the tests need: the interval (paired t or
    Welch), the spread (sd of the paired differences, or of each side for Welch)."""

    iv: Interval
    sd: float | None
    sd_b: float | None = None       # Welch: the baseline side's sd (``sd``: the label's)

    def seeds_for_power(self, power: float = POWER, level: float = LEVEL) -> int | None:
        """Seeds (per side) for 80 % power of the two-sided test at the observed Δ and spread."""
        return seeds_for_power(self.iv.value, self.sd, power, level, self.sd_b)

    def equivalence(self, margin: float, alpha: float = ALPHA):
        return tost(self.iv, margin, alpha)

    def seeds_for_equivalence(self, margin: float, power: float = POWER,
                              alpha: float = ALPHA) -> int | None:
        return seeds_for_equivalence(self.iv.value, self.sd, margin, power, alpha, self.sd_b)


def _sd(xs: Sequence[float]) -> float | None:
    import numpy as np
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else None


def compare_detail(c: LabelGroup, b: LabelGroup, metric: str,
                   level: float = LEVEL) -> Comparison | None:
    """Final ``metric`` of ``c`` minus that of its baseline ``b``: paired t over seeds when both
    ran the same seeds, else Welch's interval; with the spread behind it."""
    pairs = _paired_seeds(c, b)
    if pairs is not None:
        xs = [(final_value(x, metric), final_value(y, metric)) for x, y in pairs]
        xs = [(x, y) for x, y in xs if x is not None and y is not None]
        if len(xs) == len(pairs):
            iv = diff_ci([x for x, _ in xs], [y for _, y in xs], level, paired=True)
            return Comparison(iv, _sd([x - y for x, y in xs]))
    xa = [v for v in (final_value(r, metric) for r in c.runs) if v is not None]
    xb = [v for v in (final_value(r, metric) for r in b.runs) if v is not None]
    if not xa or not xb:
        return None
    return Comparison(diff_ci(xa, xb, level), _sd(xa), _sd(xb))


def compare(c: LabelGroup, b: LabelGroup, metric: str, level: float = LEVEL) -> Interval | None:
    """Final ``metric`` of ``c`` minus that of its baseline ``b``: paired t over seeds when both
    ran the same seeds, else Welch's interval."""
    d = compare_detail(c, b, metric, level)
    return None if d is None else d.iv


def summarize(runs: Sequence[RunData], label_keys: Sequence[str] | None = None,
              group_keys: Sequence[str] = (), baseline: str | None = None,
              smooth: int = 1, metric: str = VAL_LOSS, mode: str | None = None,
              level: float = LEVEL, margin: float | None = None) -> Summary:
    """Aggregate runs into the per-label summary table (numbers unformatted). Every Δ vs
    baseline carries its two-sided p-value and Holm's adjustment over all the Δ of this table;
    with ``margin`` also an equivalence test (TOST, ``|Δ| < margin``)."""
    if not runs:
        raise ReportError("no runs")
    runs = with_configs(runs)
    all_keys = ordered_keys([r.config for r in runs])
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
    base_ids = {id(b) for b in bmap.values() if b is not None}
    order = {id(c): i for i, c in enumerate(cells)}
    cells.sort(key=lambda c: ([natural(v) for v in c.group_values.values()],
                              0 if id(c) in base_ids else 1, order[id(c)]))

    finals = [("final_train_loss", TRAIN_LOSS), ("final_val_loss", VAL_LOSS)]
    if any(r.curve(VAL_ACC1) is not None for r in runs):
        finals.append(("final_acc1", VAL_ACC1))
    if metric not in (TRAIN_LOSS, VAL_LOSS, VAL_ACC1):
        finals.append((f"final_{col(metric)}", metric))
    has_slowdown = any(b is not None for b in bmap.values())
    notes: list[str] = []
    gcols = [shorts[k] for k in group_keys]
    columns = gcols + ["label", "n_seeds", "seeds"]
    for stem, _ in finals:
        columns += [f"{stem}_mean", f"{stem}_ci95"]
    columns += ["last20_improvement_pct", "truncated"]
    if has_slowdown:
        columns += ["baseline", "diff", "diff_ci95", "diff_method", "diff_excludes_zero",
                    "diff_p", "diff_p_holm", "diff_resolved_holm", "diff_seeds_80"]
        columns += ["target", "baseline_steps", "steps_to_target", "slowdown_method",
                    "slowdown_pct", "slowdown_lo_pct", "slowdown_hi_pct", "slowdown",
                    "eq_slowdown_pct", "eq_slowdown_lo_pct", "eq_slowdown_hi_pct",
                    "slowdown_never_seeds", "eq_beyond_seeds"]
    rows = []
    for c in cells:
        where = c.label + (f" [{c.group}]" if c.group else "")
        row: dict[str, Any] = {shorts[k]: fmt_value(c.group_values[k]) for k in group_keys}
        row.update(label=c.label, n_seeds=len(c.runs),
                   seeds=";".join(str(r.config.get(SEED_KEY, "?")) for r in c.runs))
        for stem, tag in finals:
            iv = mean_ci([v for v in (final_value(r, tag) for r in c.runs) if v is not None],
                         level)
            row[stem + "_mean"] = iv.value if iv.n else None
            row[stem + "_ci95"] = iv.half_width
        cut = {r.name: step for r in c.runs for _, tag in finals[:2] + [("", metric)]
               if (step := r.truncated(tag)) is not None}
        row["truncated"] = ";".join(sorted(cut))
        max_steps = {r.name: r.config.get("trainer.max_steps") for r in c.runs}
        for name, step in sorted(cut.items()):
            msg = (f"{where}: run {name} stops at step {step} before trainer.max_steps "
                   f"{max_steps[name]}: its last value is mid-curve, not final (marked {TRUNC})")
            warnings.warn(msg)
            notes.append(msg)
        curves = [x for x in (r.curve(metric) for r in c.runs) if x is not None]
        row["last20_improvement_pct"] = None
        if curves:
            try:
                s, m, _, _ = seed_average(curves, smooth)
                imp = last_fraction_improvement(s, m, FLAT_FRACTION, mode)
                row["last20_improvement_pct"] = None if imp is None else 100.0 * imp
            except StatsError:
                pass
        lasts = {int(x[0][-1]) for x in curves}
        if len(lasts) > 1:
            notes.append(f"{where}: seeds end at different steps {sorted(lasts)} "
                         f"(curves averaged over common steps)")
        unfinished = [r.name for r in c.runs if r.status not in (None, "finished")]
        if unfinished:
            notes.append(f"{where}: run(s) not finished: {', '.join(unfinished)}")
        if has_slowdown:
            row.update({k: None for k in columns if k not in row})
            row["slowdown"] = ""
            b = bmap.get(id(c))
            if b is not None:
                _compare_row(row, c, b, metric, smooth, mode, level, notes, where)
        rows.append(row)
    if has_slowdown:
        for r, adj in zip(rows, holm([r.get("diff_p") for r in rows])):
            r["diff_p_holm"] = adj
            r["diff_resolved_holm"] = None if adj is None else bool(adj < ALPHA)
    single = [c.label + (f" [{c.group}]" if c.group else "") for c in cells if len(c.runs) == 1]
    if single:
        notes.append(f"one seed, no interval: {'; '.join(single[:8])}"
                     + (f" (+{len(single) - 8} more)" if len(single) > 8 else ""))
    for c in cells:   # the baselines' own flatness: the slowdown is read where it converged
        if id(c) in base_ids:
            r = rows[cells.index(c)]
            imp = r["last20_improvement_pct"]
            if imp is not None and imp >= 100 * FLAT_TOLERANCE:
                notes.append(f"baseline {c.label}{' [' + c.group + ']' if c.group else ''} "
                             f"still improves {imp:.1f}% over its last "
                             f"{100 * FLAT_FRACTION:.0f}% of steps (seed-mean {metric}"
                             + (f", trailing mean over K={smooth} points" if smooth > 1 else
                                ", unsmoothed") + f"; flattened: < "
                             f"{100 * FLAT_TOLERANCE:.0f}%): train longer before reading "
                             f"the slowdown")
    s = Summary(cells=cells, label_keys=list(label_keys), group_keys=list(group_keys),
                shorts=shorts, metric=metric, mode=mode, smooth=smooth, rows=rows,
                columns=columns, baselines=bmap, finals=finals, has_slowdown=has_slowdown,
                notes=notes)
    if margin is not None:
        add_equivalence(s, margin, level)
    return s


TOST_COLUMNS = ["tost_margin", "tost_p", "tost_equivalent", "tost_seeds_80"]


def add_equivalence(s: Summary, margin: float, level: float = LEVEL) -> Summary:
    """Add the equivalence test of every Δ vs baseline to ``s`` (in place): TOST of
    ``|Δ| < margin`` at level 5 % (``tost_p``, ``tost_equivalent``) and the seeds for 80 %
    power of it at the observed Δ and spread (``tost_seeds_80``; None when ``|Δ| >= margin``)."""
    if not s.has_slowdown:
        return s
    s.margin = margin
    s.columns = [c for c in s.columns if c not in TOST_COLUMNS]
    at = s.columns.index("diff_seeds_80") + 1
    s.columns[at:at] = TOST_COLUMNS
    for c, row in zip(s.cells, s.rows):
        b = s.baselines.get(id(c))
        d = None if b is None or b is c else compare_detail(c, b, s.metric, level)
        e = None if d is None else d.equivalence(margin)
        row.update(tost_margin=margin if e is not None else None,
                   tost_p=None if e is None else e.p,
                   tost_equivalent=None if e is None else e.equivalent,
                   tost_seeds_80=None if e is None else d.seeds_for_equivalence(margin))
    return s


def _ordered_curves(c: LabelGroup, b: LabelGroup, metric: str):
    """``(baseline curves, label curves, paired)``: matched by seed when both labels ran the
    same distinct seeds and every run has the metric, else in run order, unpaired."""
    pairs = _paired_seeds(c, b)
    if pairs is not None:
        cb = [(y.curve(metric), x.curve(metric)) for x, y in pairs]
        if all(u is not None and v is not None for u, v in cb):
            return [u for u, _ in cb], [v for _, v in cb], True
    rc = [x for x in (r.curve(metric) for r in c.runs) if x is not None]
    bc = [x for x in (r.curve(metric) for r in b.runs) if x is not None]
    return bc, rc, False


def _compare_row(row, c, b, metric, smooth, mode, level, notes, where) -> None:
    row["baseline"] = b.label
    bc, rc, paired = _ordered_curves(c, b, metric)
    if not rc:
        row["slowdown"] = "no data"
        return
    if not bc:
        return
    if b is not c:
        d = compare_detail(c, b, metric, level)
        if d is not None:
            iv = d.iv
            row.update(diff=iv.value, diff_ci95=iv.half_width, diff_method=iv.method,
                       diff_excludes_zero=iv.excludes_zero, diff_p=iv.p,
                       diff_seeds_80=d.seeds_for_power(POWER, level))
    try:
        sd = compute_slowdown(bc, rc, smooth, mode, level, bootstrap=b is not c,
                              paired=paired and b is not c)
    except StatsError as e:
        notes.append(f"{where}: no slowdown ({e})")
        row["slowdown"] = "n/a"
        return
    pct = lambda x: None if x is None or math.isnan(x) or math.isinf(x) else 100.0 * x  # noqa
    row.update(target=sd.target, baseline_steps=sd.steps_base, steps_to_target=sd.steps,
               slowdown_method=None if b is c else (sd.method or None),
               slowdown_pct=None if sd.slowdown is None else 100.0 * sd.slowdown,
               slowdown="baseline" if b is c else sd.text,
               eq_slowdown_pct=None if b is c else pct(sd.equivalent),
               slowdown_never_seeds=sd.never if sd.method == "paired t" else None,
               eq_beyond_seeds=sd.beyond if sd.method == "paired t" else None)
    row["_eq_text"] = "" if b is c else sd.eq_text
    if sd.interval is not None:
        row.update(slowdown_lo_pct=pct(sd.interval[0]), slowdown_hi_pct=pct(sd.interval[1]))
        row["_sd_iv"] = interval_text(sd.interval)
    if sd.eq_interval is not None:
        row.update(eq_slowdown_lo_pct=pct(sd.eq_interval[0]),
                   eq_slowdown_hi_pct=pct(sd.eq_interval[1]))
        row["_eq_iv"] = interval_text(sd.eq_interval)


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------
def pm(mean: float | None, half: float | None, n: int, nd: int = 4) -> str:
    """``m ± h``; one seed: ``m (1 seed)``, never a zero-width interval."""
    if mean is None:
        return "-"
    if n == 1:
        return f"{mean:.{nd}f} (1 seed)"
    if half is None:
        return f"{mean:.{nd}f}"
    return f"{mean:.{nd}f} ± {half:.{nd}f}"


def p_text(p: float | None) -> str:
    """A p-value to two significant digits (``<1e-4`` below that)."""
    if p is None:
        return "-"
    return "<1e-4" if p < 1e-4 else f"{p:.2g}"


def seeds_text(n: int | None) -> str:
    return "" if n is None else f" ({n} seeds for 80 % power)"


def tost_text(p: float | None, equivalent: bool | None, need: int | None) -> str:
    """The TOST cell: yes / no with its p-value, and the seeds 80 % power would need."""
    if p is None:
        return "-"
    if equivalent:
        return f"yes (p {p_text(p)})"
    return f"no (p {p_text(p)}" + ("; Δ outside the margin)" if need is None else
                                  f"; {need} seeds for 80 % power)")


def md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


FINAL_HEAD = {"final_train_loss": "final train loss", "final_val_loss": "final val loss",
              "final_acc1": "final acc@1"}


def summary_markdown(s: Summary) -> str:
    gcols = [s.shorts[k] for k in s.group_keys]
    head = gcols + ["label", "seeds"] + [FINAL_HEAD.get(stem, f"final {tag}")
                                        for stem, tag in s.finals]
    if s.has_slowdown:
        head += [f"Δ final {s.metric} vs baseline", "p (Holm)", "Δ ≠ 0 (Holm)"]
        if s.margin is not None:
            head += [f"equivalent within ±{s.margin:g} (TOST)"]
        head += ["L*", "steps to L*", "slowdown", "equivalent slowdown"]
    lines = [md_row(head), md_row(["---"] * len(head))]
    for r in s.rows:
        cut = TRUNC if r["truncated"] else ""
        cells = [str(r[c]) for c in gcols] + [r["label"], str(r["n_seeds"])]
        cells += [pm(r[stem + "_mean"], r[stem + "_ci95"], r["n_seeds"]) + cut
                  for stem, _ in s.finals]
        if s.has_slowdown:
            if r["diff"] is None:
                cells += ["-", "-", "-"] + (["-"] if s.margin is not None else [])
            else:
                one = r["diff_ci95"] is None
                cells += [f"{r['diff']:+.4f}" + (" (1 seed)" if one else
                                                 f" ± {r['diff_ci95']:.4f}"),
                          "-" if r["diff_p"] is None else
                          f"{p_text(r['diff_p'])} ({p_text(r['diff_p_holm'])})",
                          "-" if r["diff_resolved_holm"] is None else
                          "yes" if r["diff_resolved_holm"] else
                          "no" + seeds_text(r["diff_seeds_80"])]
                if s.margin is not None:
                    cells.append(tost_text(r.get("tost_p"), r.get("tost_equivalent"),
                                           r.get("tost_seeds_80")))
            if r["baseline"] is None or r["target"] is None:
                cells += ["-", "-", r["slowdown"] or "-", "-"]
            else:
                one = " (1 seed)" if r["n_seeds"] == 1 and r["slowdown"] != "baseline" else ""
                cells += [f"{r['target']:.4f}",
                          NEVER if r["steps_to_target"] is None else
                          f"{r['steps_to_target']:.0f}",
                          " ".join(x for x in (r["slowdown"], r.get("_sd_iv", "")) if x) + one,
                          (" ".join(x for x in (r.get("_eq_text", ""), r.get("_eq_iv", ""))
                                    if x) + one) or "-"]
        lines.append(md_row(cells))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# best learning rate
# --------------------------------------------------------------------------------------------
def csv_text(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        out = []
        for c in columns:
            v = r.get(c)
            out.append("" if v is None else repr(v) if isinstance(v, float) else v)
        w.writerow(out)
    return buf.getvalue()


__all__ = ["Summary", "summarize", "summary_markdown", "csv_text", "add_equivalence", "final_value", "compare", "compare_detail", "Comparison",
           "TRAIN_LOSS", "VAL_LOSS", "VAL_ACC1"]
