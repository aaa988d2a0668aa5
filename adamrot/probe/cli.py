"""``adamrot probe RUN_DIR|CKPT``: the rotation-dependent quantities of paper Sec. 4 measured at
a checkpoint, in the rotated space it was trained in (definitions: docs/CONVENTIONS.md §6).

Loads the model, data and rotation of the run (:mod:`.loading`), then computes the gradient
bound of Alg. 1 over ``--batches`` batches, ``--hessian-rows`` Hessian rows averaged over
``--hessian-batches`` batches (:mod:`.rows`: rows sampled round-robin over ``--row-types``;
their I_N / I_L / I_¬L blocks and contributions along ``--random-directions`` random and Adam's
update direction), ``‖H‖_(1,1)/d`` with a Cauchy cross-check, and 95 % intervals with the rows
and directions the Table 1 and Fig. 8 claims need (:mod:`.summary`). Writes ``OUT/probe.json``
and figures (``OUT`` = ``RUN_DIR/probe`` by default). Every finished unit of work is saved
(:mod:`.run`): rerunning the same command resumes; Ctrl-C exits 130 after saving.

Exit statuses: 0 done; 2 bad input or a write that failed (full disk, permissions), with one
``adamrot: error:`` line; 130 interrupted; partial results are kept after a failed write or an
interruption.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from callbacks.exits import EXIT_CONFIG_ERROR as EXIT_BAD_INPUT, EXIT_INTERRUPTED

from .loading import ProbeError
from .run import run_probe
from .summary import print_summary



def _count(minimum: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {s!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v
    return parse


def _cauchy(s: str) -> int:
    v = _count(0)(s)
    if v == 1:
        raise argparse.ArgumentTypeError("must be 0 (skip) or at least 2")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adamrot probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="run directory (with config.yaml) or a checkpoint file")
    p.add_argument("--ckpt", help="checkpoint (default RUN_DIR/checkpoints/last.ckpt)")
    p.add_argument("--config", help="config.yaml (default RUN_DIR/config.yaml)")
    p.add_argument("--out", help="output directory (default RUN_DIR/probe)")
    p.add_argument("--batches", type=_count(0), default=1000,
                   help="T minibatches for the gradient bound (paper: 1000; 0 skips)")
    p.add_argument("--hessian-rows", type=_count(0), default=10,
                   help="N sampled rows (0 skips)")
    p.add_argument("--hessian-batches", type=_count(0), default=100,
                   help="k minibatches averaged per row (paper: 5000)")
    p.add_argument("--row-types", help="comma list of parameter types to sample rows from")
    p.add_argument("--layers", help="comma list of Transformer block indices")
    p.add_argument("--cauchy-vectors", type=_cauchy, default=8,
                   help="M Cauchy vectors for the (1,1)-norm cross-check (0 skips; >= 2)")
    p.add_argument("--random-directions", type=_count(0), default=4,
                   help="random unit directions for the contributions")
    p.add_argument("--rows-per-pass", type=_count(1), default=1,
                   help="rows sharing one gradient graph per batch (memory: r x d)")
    p.add_argument("--split", choices=("train", "val"), default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--save-every", type=_count(1), default=20,
                   help="save the running HVP sum every B batches")
    p.add_argument("--overwrite", action="store_true",
                   help="discard partial or final results made with other settings")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        res = run_probe(args)
    except KeyboardInterrupt:
        print("\nadamrot probe: interrupted; partial results saved, rerun the same command to "
              "resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ProbeError as e:
        print(f"adamrot: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:          # e.g. a full disk: the units saved so far are kept
        where = f"cannot write {e.filename}: " if e.filename else ""
        print(f"adamrot: error: {where}{e.strerror or e}; the results saved so far are kept: "
              "rerun to resume", file=sys.stderr)
        return EXIT_BAD_INPUT
    print_summary(res)
    return 0
