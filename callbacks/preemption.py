"""Stopping a run without losing it: SIGTERM (preemption) saves ``last.ckpt`` at the end of
the current optimizer step and the run exits 143 (docs/RUNS.md)."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Optional

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from callbacks.checkpoint_io import last_checkpoint_path
from callbacks.exits import EXIT_PREEMPTED

__all__ = ["PreemptionCheckpoint", "EXIT_PREEMPTED"]

#: exit status of a run stopped by SIGTERM after saving ``last.ckpt`` (128 + SIGTERM)


class PreemptionCheckpoint(Callback):
    """SIGTERM (preemption) saves ``last.ckpt`` at the end of the current optimizer step and
    ends the run through Lightning's ``SIGTERMException``; with ``save_at_end``, ``last.ckpt``
    is also written when training ends normally at a step that ``ModelCheckpoint``'s
    ``every_n_train_steps`` did not save (so the final weights are always on disk).

    Lightning's own SIGTERM handler sets ``trainer.received_sigterm`` and raises at the end of
    the current *batch*, without a checkpoint (and mid-accumulation). From ``on_train_start``
    (after Lightning registered its handlers) this callback installs a handler that only
    records the request; at the end of the next batch that completed an optimizer step, the
    ranks agree (a boolean all-reduce: SIGTERM on any rank stops every rank), ``last.ckpt`` is
    written (atomically, by the trainer's checkpoint IO) to the ModelCheckpoint's directory and
    ``trainer.received_sigterm`` is set on every rank, so that Lightning raises its
    ``SIGTERMException`` once the step's metrics are logged. ``adamrot fit`` then exits with status
    :data:`EXIT_PREEMPTED` (143); the same command resumes from ``last.ckpt`` (``--resume auto``).
    ``trainer.received_sigterm`` set by anyone else is honoured the same way.
    Lightning's handlers are restored at the end of training.
    """

    def __init__(self, enabled: bool = True, save_at_end: bool = True):
        self.enabled = enabled
        self.save_at_end = save_at_end
        self.requested = False
        self.preempted = False
        self.saved_path: Optional[str] = None
        self._previous = None
        self._step_at_start: Optional[int] = None

    def _handler(self, signum, frame) -> None:
        self.requested = True

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return
        self.requested = False
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._handler)

    def _restore(self) -> None:
        if self._previous is not None:
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()
        if self.save_at_end and trainer.global_step > 0 and not trainer.sanity_checking:
            cb = trainer.checkpoint_callback
            if isinstance(cb, ModelCheckpoint) and not cb.save_last:
                return
            path = last_checkpoint_path(trainer)
            if getattr(cb, "_last_global_step_saved", None) == trainer.global_step \
                    and os.path.exists(path):
                return
            self._save(trainer, path)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def _save(self, trainer, path: str) -> None:
        trainer.save_checkpoint(path, weights_only=False)
        cb = trainer.checkpoint_callback
        if isinstance(cb, ModelCheckpoint):
            cb.last_model_path = path
            if hasattr(cb, "_last_global_step_saved"):
                cb._last_global_step_saved = trainer.global_step

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.enabled or self._step_at_start is None:
            return
        if trainer.global_step == self._step_at_start:
            return                                  # mid-accumulation: not a step boundary
        stop = self.requested or bool(trainer.received_sigterm)
        if trainer.world_size > 1:
            stop = bool(trainer.strategy.reduce_boolean_decision(stop, all=False))
        if not stop:
            return
        path = last_checkpoint_path(trainer)
        self._save(trainer, path)
        self.preempted, self.saved_path = True, path
        rank_zero_info(f"SIGTERM: saved {path} at step {trainer.global_step}; stopping. Run the "
                       "same command again to resume.")
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and hasattr(connector, "received_sigterm"):
            # Lightning raises SIGTERMException itself at the end of this batch, after this
            # step's metrics are logged (and its scheduled validation, if any, has run)
            connector.received_sigterm = True
        else:
            raise SIGTERMException()
