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
"""
from .cli import build_parser, main
from .loading import ProbeError, gpt_loss
from .run import run_probe

__all__ = ["build_parser", "main", "run_probe", "ProbeError", "gpt_loss"]
