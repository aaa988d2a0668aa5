"""``adamrot sweep SWEEP.yaml``: a grid of ``adamrot fit`` trainings with an index that makes it
resumable: finished runs are skipped, interrupted ones resume from their checkpoint, a failing
run is recorded and the others go on. Runs go one after the other, ``--jobs N`` at once on this
machine, or as submitit jobs on this machine or a SLURM cluster (``--launcher local|slurm``).

Modules: :mod:`.spec` (sweep file, run list, commands), :mod:`.index` (state on disk),
:mod:`.options` (launch options), :mod:`.world` (the global batch kept under
``--gpus-per-node``/``--nodes``), :mod:`.preflight` (``--preflight``, and before ``--launcher
slurm``), :mod:`.pool` (child processes), :mod:`.submit` and :mod:`.job` (submitit), :mod:`.cli`.
How to use it: ``docs/CLUSTER.md``.
"""
from adamrot.sweep.cli import build_parser, main, run_sweep, show_status
from adamrot.sweep.index import (INDEX_CSV, INDEX_JSON, LOG_NAME, STATUSES, load_index,
                                 plan_action, save_index)
from adamrot.sweep.options import LaunchOptions, resolve_launch
from adamrot.sweep.spec import (RunSpec, SweepConfigError, SweepSpec, build_command, cli_value,
                                default_command, expand_runs, load_spec, parse_spec, sanitize,
                                short_key, short_keys, value_label)

__all__ = ["main", "run_sweep", "show_status", "build_parser", "load_spec", "parse_spec",
           "expand_runs", "build_command", "cli_value", "default_command", "short_key",
           "short_keys", "value_label", "sanitize", "SweepSpec", "RunSpec", "SweepConfigError",
           "LaunchOptions", "resolve_launch", "load_index", "save_index", "plan_action",
           "STATUSES", "INDEX_JSON", "INDEX_CSV", "LOG_NAME"]
