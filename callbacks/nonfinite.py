"""Non-finite guard: a NaN/inf loss or gradient stops (or skips) the optimizer step before
anything non-finite reaches the weights, so no checkpoint can hold it (docs/RUNS.md).

The guard runs inside the LightningModule's ``optimizer_step`` (``RotatableModule`` routes
it through :func:`guarded_optimizer_step`); nothing is patched on the optimizer.
"""
from __future__ import annotations

import os
from typing import Callable, Literal, Optional

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from callbacks.checkpoint_io import last_checkpoint_path
from rotations.zoo import requires_closure

__all__ = ["NonFiniteError", "NonFiniteGuard", "guarded_optimizer_step"]


class NonFiniteError(RuntimeError):
    """A non-finite loss, gradient or parameter stopped training."""


class _SkipStep(Exception):
    """Raised inside the closure to abandon an optimizer step before it updates anything."""


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    if not tensors:
        return True
    by_device: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault((t.device, t.dtype), []).append(t)
    flags = [torch.isfinite(torch.stack(torch._foreach_norm(ts, float("inf")))).all()
             for ts in by_device.values()]
    return bool(torch.stack(flags).all())


def _nonfinite_value(x) -> Optional[float]:
    """The loss as a float if it is non-finite, else None."""
    if isinstance(x, dict):
        x = x.get("loss")
    if isinstance(x, torch.Tensor) and x.numel():
        v = x.detach().float()
        return None if bool(torch.isfinite(v).all()) else float(v.reshape(-1)[0])
    return None


def guarded_optimizer_step(trainer, optimizer, closure: Optional[Callable]) -> None:
    """``optimizer.step(closure=closure)`` through the trainer's :class:`NonFiniteGuard` (if
    any). Call from ``LightningModule.optimizer_step``."""
    guard = next((c for c in trainer.callbacks if isinstance(c, NonFiniteGuard)), None)
    if guard is None or guard.action == "off":
        optimizer.step(closure=closure)
    else:
        guard.optimizer_step(trainer, optimizer, closure)


class NonFiniteGuard(Callback):
    """Stop (or skip) on a non-finite loss or gradient, before the optimizer step.

    The loss of every micro-batch of the step and all gradients (after backward and the DDP
    all-reduce, before clipping spreads a NaN everywhere) are checked; under DDP the ranks
    agree (one boolean all-reduce per step). Then:

    * ``action="stop"`` (default): raise :class:`NonFiniteError` naming the step and what was
      non-finite. The optimizer step is not taken, nothing is saved, and the last checkpoint
      on disk is the last good one.
    * ``action="skip"``: drop the step (gradients zeroed, no update of weights or optimizer
      state; the LR schedule and ``global_step`` still advance). After
      ``max_consecutive_skips`` skipped steps in a row, stop as above.
    * ``action="off"``: do nothing.

    With ``check_params`` the parameters are checked after each step too (a finite gradient can
    still overflow a weight): non-finite parameters always stop the run.

    Optimizers whose step needs a closure (LBFGS) and fp16 loss scaling (whose ``GradScaler``
    already skips inf steps) are checked on the loss only, and stop rather than skip.
    """

    def __init__(self, action: Literal["stop", "skip", "off"] = "stop",
                 max_consecutive_skips: int = 10, check_params: bool = True):
        if action not in ("stop", "skip", "off"):
            raise ValueError(f"nonfinite.action: {action!r} is not allowed; "
                             "choose one of stop, skip, off")
        if isinstance(max_consecutive_skips, bool) or not isinstance(max_consecutive_skips, int) \
                or max_consecutive_skips < 1:
            raise ValueError(f"nonfinite.max_consecutive_skips must be a positive integer, "
                             f"got {max_consecutive_skips!r}")
        self.action = action
        self.max_consecutive_skips = max_consecutive_skips
        self.check_params = check_params
        self.skipped: list[int] = []          # steps skipped in this run
        self._consecutive = 0
        self._pending: Optional[str] = None   # non-finite loss of an accumulated micro-batch
        self._step_at_start: Optional[int] = None
        self._names: dict[int, str] = {}
        self._routed = False                  # optimizer_step came through the guard

    # -- state (skipped steps survive a resume) ----------------------------------------------
    def state_dict(self) -> dict:
        return {"skipped": list(self.skipped)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = [int(s) for s in state_dict.get("skipped", [])]

    def on_train_start(self, trainer, pl_module) -> None:
        self._names = {id(p): n for n, p in pl_module.named_parameters()}

    # -- the step ----------------------------------------------------------------------------
    def optimizer_step(self, trainer, optimizer, closure: Optional[Callable]) -> None:
        self._routed = True
        closure_based = requires_closure(optimizer)
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        check_grads = not (closure_based or scaled)
        can_skip = self.action == "skip" and not (closure_based or scaled)

        def checked():
            loss = closure() if closure is not None else None
            what = self._describe(optimizer, loss, check_grads)
            self._pending = None
            if not self._agree(trainer, what is not None):
                self._consecutive = 0
                return loss
            what = what or "values on another rank"
            step = trainer.global_step
            if can_skip and self._consecutive < self.max_consecutive_skips:
                self._consecutive += 1
                self.skipped.append(step)
                rank_zero_warn(f"non-finite {what} at step {step}: optimizer step skipped "
                               f"({self._consecutive} in a row, {len(self.skipped)} in this run)")
                raise _SkipStep()
            reason = (f" after {self._consecutive} consecutive skipped steps"
                      if self.action == "skip" and self._consecutive else "")
            raise NonFiniteError(
                f"non-finite {what} at step {step}{reason}: training stopped before the "
                f"optimizer step, nothing was saved after it (last checkpoint: "
                f"{_last_saved(trainer)}). Set nonfinite.action=skip to skip such steps instead.")

        try:
            optimizer.step(closure=checked)
        except _SkipStep:
            optimizer.zero_grad(set_to_none=True)
            return
        self._after_step(trainer, optimizer)

    # -- checks ------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.action == "off" or trainer.global_step != self._step_at_start:
            if self.action != "off" and not self._routed:
                self._routed = True          # warn once
                rank_zero_warn(f"nonfinite: {type(pl_module).__name__}.optimizer_step does not "
                               "call callbacks.nonfinite.guarded_optimizer_step: steps are not "
                               "guarded")
            return
        # a non-finite loss of a micro-batch whose optimizer step comes later (accumulation)
        v = _nonfinite_value(outputs)
        if v is not None:
            self._pending = f"loss ({v}) of micro-batch {batch_idx}"

    def _describe(self, opt, loss, check_grads: bool) -> Optional[str]:
        problems = [self._pending] if self._pending else []
        v = _nonfinite_value(loss)
        if v is not None:
            problems.append(f"loss ({v})")
        if check_grads:
            grads = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            if not _all_finite([p.grad for p in grads]):
                bad = [self._names.get(id(p), "?") for p in grads
                       if not bool(torch.isfinite(p.grad).all())]
                shown = ", ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
                problems.append(f"gradient of {shown}")
        return "; ".join(problems) if problems else None

    @staticmethod
    def _agree(trainer, bad: bool) -> bool:
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        return bad

    def _after_step(self, trainer, opt) -> None:
        """Parameters after the update (identical on every rank under DDP: no agreement)."""
        if not self.check_params:
            return
        params = [p for g in opt.param_groups for p in g["params"]]
        if _all_finite([p.detach() for p in params]):
            return
        bad = [self._names.get(id(p), "?") for p in params
               if not bool(torch.isfinite(p.detach()).all())]
        raise NonFiniteError(
            f"non-finite parameters ({', '.join(bad[:3])}) after the update of step "
            f"{trainer.global_step}: training stopped, nothing was saved after it "
            f"(last checkpoint: {_last_saved(trainer)})")


def _last_saved(trainer) -> str:
    path = last_checkpoint_path(trainer)
    return path if os.path.exists(path) else "none"
