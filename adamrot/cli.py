"""The ``adamrot`` command: dispatches to ``fit|validate|test`` (LightningCLI,
:mod:`adamrot.train`) and the tools ``sweep``, ``report``, ``probe``, ``prepare``,
``preflight``.

Heavy modules (torch, Lightning) are imported only once a subcommand runs, so ``adamrot
--help`` is instant. Exit status: 0 done, 2 refused input (one ``adamrot: error:`` line, and
nothing written), 3 non-finite values stopped training, 4 a DDP rank lost its launcher, 130
stopped by Ctrl-C (the last saved checkpoint is intact), 143 stopped by SIGTERM after saving
(run the same command to resume). See docs/RUNS.md.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Optional

from adamrot.errors import ConfigError, rank_label, refuse  # noqa: F401
from callbacks.exits import EXIT_CONFIG_ERROR, EXIT_NONFINITE, EXIT_PREEMPTED  # noqa: F401

SUBTOOLS = {
    "sweep": "adamrot.sweep",
    "report": "adamrot.report",
    "probe": "adamrot.probe",
    "prepare": "adamrot.prepare",
    "preflight": "adamrot.preflight",
}
TRAINER_SUBCOMMANDS = {
    "fit": "train a model; resumes the run in --trainer.default_root_dir (--resume auto)",
    "validate": "evaluate a checkpoint on the validation set (results in DIR/validate/)",
    "test": "evaluate a checkpoint on the test set (results in DIR/test/)",
}
TOOL_HELP = {
    "sweep": "run a grid of fit runs (skips finished runs, resumes interrupted ones)",
    "report": "loss curves, tables and best lr of finished runs",
    "probe": "gradient bound and Hessian probes on a checkpoint",
    "prepare": "tokenize a corpus once into a dataset the text datamodule streams",
    "preflight": "batch, tokens, epochs, memory, cost and data mixing of a run before it runs",
}



def usage() -> str:
    lines = ["usage: adamrot SUBCOMMAND [options]   (adamrot SUBCOMMAND --help for its options)",
             "", "subcommands:"]
    for name, text in TRAINER_SUBCOMMANDS.items():
        lines.append(f"  {name:<9} {text}")
    for name, text in TOOL_HELP.items():
        missing = importlib.util.find_spec(SUBTOOLS[name]) is None
        lines.append(f"  {name:<9} {text}" + ("  (not installed)" if missing else ""))
    lines += ["", "exit status: 0 done, 2 refused input (nothing written), 3 non-finite values "
              "stopped training,", "4 a DDP rank lost its launcher, 130 stopped by Ctrl-C (the last "
              "saved checkpoint is intact),", "143 stopped by SIGTERM after saving (run the same "
              "command to resume).",
              "Runs, resuming and checkpoints: docs/RUNS.md"]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in SUBTOOLS:
        try:
            module = importlib.import_module(SUBTOOLS[args[0]])
        except ModuleNotFoundError as e:
            if e.name != SUBTOOLS[args[0]]:
                raise
            refuse(f"'adamrot {args[0]}' is not available in this installation")
        return int(module.main(args[1:]) or 0)
    if args[0] not in TRAINER_SUBCOMMANDS and not args[0].startswith("-"):
        refuse(f"unknown subcommand {args[0]!r}; choose one of "
               f"{', '.join([*TRAINER_SUBCOMMANDS, *SUBTOOLS])} (adamrot --help)")
    from adamrot.runs import LAUNCHER_ENV, exit_with_launcher
    rank = rank_label()
    if rank is None:
        os.environ[LAUNCHER_ENV] = str(os.getpid())     # inherited by the ranks it launches
    elif any(os.environ.get(k, "0") != "0" for k in ("LOCAL_RANK", "SLURM_PROCID")):
        exit_with_launcher(rank)      # a rank started by a launcher: before the heavy imports
    from adamrot.train import run
    return run(args)


def __getattr__(name: str):
    if name == "AdamrotCLI":           # the LightningCLI class, imported on first use
        from adamrot.train import AdamrotCLI
        return AdamrotCLI
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(main())
