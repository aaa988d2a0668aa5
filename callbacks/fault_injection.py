"""Faults on demand (NaN loss or gradient, SIGTERM, a crash at a chosen step) to exercise
the reliability callbacks in tests and drills (docs/RUNS.md)."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from typing import Optional

import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["FaultInjection"]


class FaultInjection(Callback):
    """Inject faults at chosen steps (``global_step`` when the fault fires, i.e. during the
    ``step + 1``-th optimizer step). A fault fires only if the run started before that step, so
    the same command resumes past it.

    Args:
        nan_loss_at_step: multiply the module's 0-dim floating outputs (the loss) by NaN.
        nan_grad_at_step: set one gradient entry to NaN after backward.
        sigterm_at_step: send SIGTERM to this process (and, with ``sigterm_workers``, to its
            DataLoader workers, as a process-group signal would).
        raise_at_step: raise ``RuntimeError`` (a crash).
    """

    def __init__(self, nan_loss_at_step: Optional[int] = None,
                 nan_grad_at_step: Optional[int] = None, sigterm_at_step: Optional[int] = None,
                 sigterm_workers: bool = True, raise_at_step: Optional[int] = None):
        self.nan_loss_at_step = nan_loss_at_step
        self.nan_grad_at_step = nan_grad_at_step
        self.sigterm_at_step = sigterm_at_step
        self.sigterm_workers = sigterm_workers
        self.raise_at_step = raise_at_step
        self._start: Optional[int] = None
        self._hook = None
        self._fired: set[tuple[str, int]] = set()

    def _due(self, trainer, name: str, step: Optional[int]) -> bool:
        return (step is not None and trainer.global_step == step and self._start is not None
                and self._start <= step and (name, step) not in self._fired)

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._due(trainer, "raise", self.raise_at_step):
            self._fired.add(("raise", self.raise_at_step))
            raise RuntimeError(f"FaultInjection: crash at step {trainer.global_step}")
        if self._due(trainer, "sigterm", self.sigterm_at_step):
            self._fired.add(("sigterm", self.sigterm_at_step))
            if self.sigterm_workers:
                for child in multiprocessing.active_children():
                    with contextlib.suppress(ProcessLookupError, TypeError):
                        os.kill(child.pid, signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        if self._hook is None and self.nan_loss_at_step is not None \
                and trainer.global_step == self.nan_loss_at_step:

            def poison(module, args, output):
                def nan(t):
                    if isinstance(t, torch.Tensor) and t.dim() == 0 and t.is_floating_point():
                        return t * float("nan")
                    return t
                if isinstance(output, tuple):
                    return tuple(nan(t) for t in output)
                if isinstance(output, list):
                    return [nan(t) for t in output]
                return nan(output)
            self._hook = pl_module.register_forward_hook(poison)

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.nan_grad_at_step is not None and trainer.global_step == self.nan_grad_at_step:
            for p in pl_module.parameters():
                if p.grad is not None:
                    p.grad.view(-1)[0] = float("nan")
                    break

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._hook is not None and trainer.global_step != self.nan_loss_at_step:
            self._hook.remove()
            self._hook = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
