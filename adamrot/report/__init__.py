"""Loss-curve figures and tables with confidence intervals over seeds for runs and sweeps.

    adamrot report RUN_DIR_OR_SWEEP_DIR [...] --out OUT_DIR [--baseline LABEL]
        [--label-keys K1,K2] [--group-keys K1,K2] [--smooth K] [--train-smooth K]
        [--metric val/loss] [--mode min|max]

Writes ``summary.md`` / ``summary.csv``, ``loss_curves*.png`` and, for lr sweeps,
``best_lr.md`` / ``best_lr.csv``. Modules: ``events`` (reading runs), ``labels`` (which runs
are seeds of one label), ``stats`` (intervals, slowdown), ``significance`` (Holm, TOST, power), ``tables``,
``best_lr``, ``plots``, ``cli``.
Definitions: docs/CONVENTIONS.md §6; how to read the tables: docs/REPRODUCE.md.
"""
from .cli import build_parser, definition_text, main, write_report
from .events import (ReportError, RunData, clean_curve, expand_inputs, find_event_dirs,
                     flatten_config, load_runs, make_run, read_config, read_last_histogram,
                     read_scalars)
from .labels import (LabelGroup, assign_baselines, auto_label_keys, config_value, group_runs,
                     match_label, metric_mode, resolve_key)
from .stats import (Interval, Slowdown, StatsError, bootstrap_ci, compute_slowdown, diff_ci,
                    first_reach, last_fraction_improvement, mean_ci, seed_average, t_quantile,
                    trailing_mean)
from .best_lr import BestLR, best_lr_markdown, best_lr_table, find_lr_key, next_grid_point
from .tables import (TRAIN_LOSS, VAL_ACC1, VAL_LOSS, Summary, compare, final_value, summarize,
                     summary_markdown)

__all__ = [
    "build_parser", "definition_text", "main", "write_report", "ReportError", "RunData",
    "clean_curve", "expand_inputs", "find_event_dirs", "flatten_config", "load_runs",
    "make_run", "read_config", "read_last_histogram", "read_scalars", "LabelGroup",
    "assign_baselines", "auto_label_keys", "config_value", "group_runs", "match_label", "metric_mode",
    "resolve_key", "Interval", "Slowdown", "StatsError", "bootstrap_ci", "compute_slowdown",
    "diff_ci", "first_reach", "last_fraction_improvement", "mean_ci", "seed_average",
    "t_quantile", "trailing_mean", "TRAIN_LOSS", "VAL_ACC1", "VAL_LOSS", "BestLR", "Summary",
    "best_lr_markdown", "best_lr_table", "compare", "final_value", "find_lr_key",
    "next_grid_point", "summarize",
    "summary_markdown",
]
