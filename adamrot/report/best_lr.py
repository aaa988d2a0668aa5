"""The best learning rate of an lr sweep (``best_lr.md`` / ``best_lr.csv``): per optimizer
and setting, the lr with the best seed-mean final metric, named best only when it is interior
to the grid (an edge optimum is flagged with the grid point to add; a setting with one lr is
not compared). Definitions: docs/CONVENTIONS.md §6.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from adamrot.runs import canon
from adamrot.sweep import short_keys, value_label

from .events import RunData
from .labels import ABSENT, config_value, fmt_value, label_string, metric_mode, natural
from .stats import LEVEL, mean_ci
from .tables import VAL_LOSS, final_value, md_row, pm


@dataclass
class BestLR:
    rows: list[dict[str, Any]]
    columns: list[str]
    metric: str
    group_cols: list[str] = field(default_factory=list)


def find_lr_key(runs: Sequence[RunData]) -> str | None:
    """The optimizer's lr key of the saved configs (``model.init_args.optimizer.init_args.lr``
    for LightningCLI's, ``model.optimizer.init_args.lr`` for flat ones)."""
    keys = [k for r in runs for k in r.config if k.endswith("optimizer.init_args.lr")]
    return max(set(keys), key=keys.count) if keys else None


def _tied_to_lr(k: str, runs: Sequence[RunData], lr_key: str, opt_key: str) -> bool:
    """True when, for every optimizer, ``k``'s value follows the lr one to one (a function of
    the lr that changes with it, e.g. ``min_lr_ratio = 1e-5 / lr``): no setting of its own."""
    per_opt: dict[str, dict[str, str]] = {}
    for r in runs:
        m = per_opt.setdefault(canon(r.config.get(opt_key)), {})
        v = canon(r.config.get(k, ABSENT))
        if m.setdefault(canon(r.config.get(lr_key)), v) != v:
            return False
    return any(len(m) > 1 for m in per_opt.values()) and all(
        len(set(m.values())) == len(m) for m in per_opt.values())


def next_grid_point(lrs: Sequence[float], above: bool) -> float:
    """The lr one grid step beyond the sorted grid ``lrs`` (the grid's geometric mean ratio),
    snapped to a half-decade value when within 1 % of one, to 3 significant digits."""
    step = (lrs[-1] / lrs[0]) ** (1.0 / (len(lrs) - 1)) if len(lrs) > 1 and lrs[0] > 0 else 10.0
    x = lrs[-1] * step if above else lrs[0] / step
    k = round(2 * math.log10(x))
    if abs(2 * math.log10(x) - k) < 0.01 * 2 / math.log(10):
        x = 10 ** (k / 2)
    return float(f"{x:.3g}")


def best_lr_table(runs: Sequence[RunData], label_keys: Sequence[str],
                  group_keys: Sequence[str] = (), metric: str = VAL_LOSS,
                  mode: str | None = None, level: float = LEVEL,
                  lr_key: str | None = None) -> BestLR | None:
    """Best seed-mean final ``metric`` and its lr per (optimizer, setting); an lr at the edge
    of the grid is not reported as best but flagged with the point to add. None unless some
    (optimizer, setting) was run with more than one lr."""
    mode = metric_mode(metric, mode)
    runs = [r for r in runs if r.has_config]
    lr_key = lr_key or find_lr_key(runs)
    if lr_key is None:
        return None
    opt_key = lr_key[: -len("init_args.lr")] + "class_path"
    runs = [r for r in runs if lr_key in r.config]
    group_keys = [k for k in group_keys if k not in (lr_key, opt_key)]
    other = [k for k in label_keys if k not in (lr_key, opt_key) and k not in group_keys
             and not _tied_to_lr(k, runs, lr_key, opt_key)]
    shorts = short_keys(list(other) + list(group_keys))
    cells: dict[tuple, dict[str, Any]] = {}
    for r in runs:
        opt = fmt_value(r.config[opt_key]) if opt_key in r.config else "optimizer"
        gv = {k: config_value(r.config, k) for k in group_keys}
        ov = {k: config_value(r.config, k) for k in other}
        c = cells.setdefault((canon(gv), opt, canon(ov)), {"gv": gv, "opt": opt, "ov": ov,
                                                             "by_lr": {}})
        c["by_lr"].setdefault(float(r.config[lr_key]), []).append(r)
    if not any(len(c["by_lr"]) > 1 for c in cells.values()):
        return None
    gcols = [shorts[k] for k in group_keys]
    columns = gcols + ["optimizer", "setting", "best_lr", "at_edge", "best_mean", "best_ci95",
                       "n_seeds", "lrs_tried", "extend_with", "all"]
    rows = []
    for c in sorted(cells.values(), key=lambda c: ([natural(v) for v in c["gv"].values()],
                                                   c["opt"],
                                                   [natural(v) for v in c["ov"].values()])):
        per_lr = []
        for lr in sorted(c["by_lr"]):
            vals = [v for v in (final_value(r, metric) for r in c["by_lr"][lr]) if v is not None]
            per_lr.append((lr, mean_ci(vals, level)))

        def score(t):
            m = t[1].value
            return math.inf if m is None or math.isnan(m) else (m if mode == "min" else -m)
        best = min(per_lr, key=score)
        lrs = [t[0] for t in per_lr]
        edge = len(lrs) > 1 and best[0] in (lrs[0], lrs[-1])
        ext = next_grid_point(lrs, above=best[0] == lrs[-1]) if edge else None
        row = {shorts[k]: fmt_value(c["gv"][k]) for k in group_keys}
        row.update(optimizer=c["opt"], setting=label_string(c["ov"], shorts) if c["ov"] else "",
                   best_lr=best[0], at_edge=edge, best_mean=best[1].value,
                   best_ci95=best[1].half_width, n_seeds=best[1].n,
                   lrs_tried=";".join(value_label(x) for x in lrs), extend_with=ext,
                   all="; ".join(f"{value_label(lr)}: {iv.value:.4f}" for lr, iv in per_lr))
        rows.append(row)
    return BestLR(rows=rows, columns=columns, metric=metric, group_cols=gcols)


def best_lr_markdown(b: BestLR) -> str:
    head = list(b.group_cols) + ["optimizer", "setting", "best lr", f"final {b.metric}",
                                 "seeds", "lrs tried", "note"]
    lines = [md_row(head), md_row(["---"] * len(head))]
    for r in b.rows:
        lr = value_label(r["best_lr"])
        if ";" not in r["lrs_tried"]:       # one lr in this setting (others missing or killed)
            best = f"not compared ({lr} only)"
            note = "one lr tried in this setting: no best lr (run the other grid points)"
        elif r["at_edge"]:
            side = "below" if r["extend_with"] < r["best_lr"] else "above"
            best = f"not interior ({lr} at the edge)"
            note = f"edge optimum: extend the grid {side}, e.g. add lr {value_label(r['extend_with'])}"
        else:
            best, note = lr, ""
        lines.append(md_row([str(r[c]) for c in b.group_cols] + [
            r["optimizer"], r["setting"] or "-", best,
            pm(r["best_mean"], r["best_ci95"], r["n_seeds"]), str(r["n_seeds"]),
            r["lrs_tried"].replace(";", ", "), note]))
    return "\n".join(lines) + "\n"
