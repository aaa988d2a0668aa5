"""``adamrot preflight [--gpu G] [--mfu X] [--calibration FILE] [--no-data] FIT_OPTIONS``:
the paper-scale truth of a run before its first GPU hour. Builds what ``fit`` builds (config,
model on the meta device, rotation plan, data module on prepared data), trains nothing, and
prints one table: the batch, memory per device against each GPU, FLOPs, step time and
GPU-hours, and the data as it will be read, with warnings and errors; with
``--trainer.default_root_dir DIR`` on the command line it also writes ``DIR/preflight.json``.
Exit status: 0, 1 when a finding is an error, 2 for refused input. ``adamrot sweep FILE
--preflight`` runs it for every run of a sweep. docs/CLUSTER.md ("Preflight")."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from adamrot.preflight.memory import GPUS

PREFLIGHT_JSON = "preflight.json"


def own_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adamrot preflight", add_help=False,
        description="Batch, tokens, epochs, memory, cost and data of a run before it runs. "
                    "Every other option is fit's (--config, --trainer.*, --model.*, --data.*).")
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("--gpu", choices=list(GPUS),
                   help="the GPU the run targets: not fitting it is an error; the cost is "
                        "computed for it (default: a100-80gb, no memory error)")
    p.add_argument("--mfu", type=float, help="model FLOPs utilisation for the time estimate "
                                             "(default: gpu_check.json's, else 0.30 assumed)")
    p.add_argument("--calibration", metavar="FILE",
                   help="gpu_check.json written by benchmarks/gpu_check.sh "
                        "(default: runs/gpu_check.json when present)")
    p.add_argument("--no-data", action="store_true", help="do not read the data")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from adamrot.errors import ConfigError, refuse

    args = list(sys.argv[1:] if argv is None else argv)
    ours, rest = own_parser().parse_known_args(args)
    if ours.help:
        own_parser().print_help()
        return 0
    if ours.mfu is not None and not 0 < ours.mfu <= 1:
        refuse(f"--mfu must be in (0, 1], got {ours.mfu}")
    if ours.calibration and not os.path.isfile(ours.calibration):
        refuse(f"--calibration {ours.calibration}: file not found")
    from adamrot.preflight.report import errors, preflight, table, write_json

    try:
        r = preflight(rest, gpu=ours.gpu, mfu=ours.mfu, calibration=ours.calibration,
                      read_data=not ours.no_data)
    except ConfigError as e:
        refuse(str(e))
    print(table(r), flush=True)
    if r["root_given"]:
        path = os.path.join(r["root_given"], PREFLIGHT_JSON)
        write_json(r, path)
        print(f"written: {path}")
    return 1 if errors(r) else 0
