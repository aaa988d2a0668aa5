"""``adamrot report``: read runs, write the tables and figures, print the tables."""
from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path
from typing import Sequence

from adamrot.runs import atomic_write

from .events import ReportError, RunData, load_runs
from .labels import LabelGroup, metric_mode
from .plots import plot_group
from .best_lr import best_lr_markdown, best_lr_table
from .tables import (VAL_LOSS, Summary, csv_text,
                     summarize, summary_markdown)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", s).strip("_") or "group"


def definition_text(s: Summary) -> str:
    cmp = "<=" if s.mode == "min" else ">="
    return (f"Final values: the last logged value per seed, mean ± half-width of the 95% "
            f"Student-t interval over seeds ('1 seed': no interval). Δ vs baseline: difference "
            f"of the final {s.metric}, paired t over seeds when both labels ran the same seeds, "
            f"else Welch; p (Holm): two-sided p and Holm's adjustment over every Δ of this "
            f"table; 'n seeds for 80 % power': noncentral t at the observed Δ and spread. "
            f"Slowdown: trailing mean over K={s.smooth} eval points; first-passage times "
            f"(first crossing {cmp} the target) interpolated linearly between eval points; L* "
            f"= the baseline's final smoothed value; slowdown = t_label(L*) / t_base(L*) - 1; "
            f"equivalent = T / t_base(label's final) - 1. Same seeds on both sides: per seed "
            f"(paired), mean with 95% t interval over seeds, 'never reached / beyond baseline "
            f"(k/n seeds)' when k seeds have no finite value; L* and 'steps to L*' are those "
            f"of the seed-mean curves. Otherwise seed-mean curves with a 95% percentile "
            f"bootstrap over the seeds of both labels. "
            f"† on a value = the run stopped before trainer.max_steps (value mid-curve); "
            f"† in a label = hyper-parameters changed mid-run (the change and its step follow; "
            f"the label is the run's starting config). Copies of one run (same run id in "
            f"run.json) are counted once.")


def write_report(runs: Sequence[RunData], out_dir: str | Path, *,
                 label_keys: Sequence[str] | None = None, group_keys: Sequence[str] = (),
                 baseline: str | None = None, smooth: int = 1, train_smooth: int | None = None,
                 metric: str = VAL_LOSS, mode: str | None = None,
                 sources: Sequence[str] = (), stream=None,
                 margin: float | None = None) -> Summary:
    """Compute everything, write the files, print the tables to ``stream``."""
    out = Path(out_dir)
    s = summarize(runs, label_keys, group_keys, baseline, smooth, metric, mode, margin=margin)
    bl = best_lr_table(runs, s.label_keys, s.group_keys, metric, mode)
    out.mkdir(parents=True, exist_ok=True)

    labels: list[str] = []
    for c in s.cells:
        if c.label not in labels:
            labels.append(c.label)
    colors = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
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
        tmp = out / f".{name}.tmp.png"
        plot_group(cells, tmp, title=g, smooth=smooth,
                   train_smooth=smooth if train_smooth is None else train_smooth,
                   colors=colors, targets=targets)
        tmp.replace(out / name)
        pngs.append(name)

    md = summary_markdown(s)
    atomic_write(out / "summary.csv", csv_text(s.columns, s.rows))
    doc = ["# adamrot report", ""]
    if sources:
        doc += ["Sources: " + ", ".join(f"`{x}`" for x in sources) + f" ({len(runs)} runs)", ""]
    doc.append("Label keys: " + (", ".join(f"`{k}`" for k in s.label_keys) or "(none)")
               + ("; group keys: " + ", ".join(f"`{k}`" for k in s.group_keys)
                  if s.group_keys else ""))
    doc += ["", definition_text(s), "", md]
    if s.notes:
        doc += ["Notes:", ""] + [f"- {n}" for n in s.notes] + [""]
    doc += [f"![loss curves]({p})" for p in pngs] + [""]
    atomic_write(out / "summary.md", "\n".join(doc))

    stream = sys.stdout if stream is None else stream
    print(md, file=stream)
    if bl is not None:
        bmd = best_lr_markdown(bl)
        atomic_write(out / "best_lr.csv", csv_text(bl.columns, bl.rows))
        best = "lowest" if metric_mode(metric, mode) == "min" else "highest"
        atomic_write(out / "best_lr.md",
                     f"# Best learning rate per optimizer\n\nCriterion: final {metric} "
                     f"({best} seed mean, ± 95% t interval over seeds). A best lr at the edge "
                     f"of the grid is not an optimum: extend the grid as the note says.\n\n"
                     + bmd)
        print(bmd, file=stream)
    return s


def _keys_arg(v: str | None) -> list[str] | None:
    return None if v is None else [x for x in re.split(r"[,\s]+", v) if x]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adamrot report",
        description="Loss curves and tables with 95%% intervals over seeds (and the slowdown "
                    "against a baseline) for runs and sweeps.",
        epilog="Definitions: docs/CONVENTIONS.md §6.")
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
    p.add_argument("--metric", default=VAL_LOSS, help="metric for slowdown / Δ / best lr")
    p.add_argument("--margin", type=float, default=None, metavar="DELTA",
                   help="equivalence margin: add a TOST column (|Δ| < DELTA); our choice, "
                        "none by default")
    p.add_argument("--mode", choices=("min", "max"), default=None,
                   help="whether lower or higher metric is better (default: max iff 'acc' in name)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.smooth < 1 or (args.train_smooth is not None and args.train_smooth < 1):
        print("adamrot: error: --smooth/--train-smooth must be >= 1", file=sys.stderr)
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
                         metric=args.metric, mode=args.mode, margin=args.margin,
                         sources=[str(p) for p in args.paths])
    except ReportError as e:
        print(f"adamrot: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/summary.md, summary.csv and figures", file=sys.stderr)
    return 0
