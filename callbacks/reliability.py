"""Fault handling for adamrot runs: atomic checkpoints, non-finite guard, preemption,
per-step RNG, rank agreement, and a fault injector to try all of them.

The ``adamrot`` CLI installs these by default (see :mod:`adamrot.cli`):

==========================  ================================================================
:class:`AtomicCheckpointIO`  checkpoint IO plugin: temp file + fsync + ``os.replace`` (+ fsync
                             of the directory); loads with ``torch.load(weights_only=True)``.
``nonfinite``                :class:`NonFiniteGuard`: a non-finite loss or gradient stops the
                             run before the optimizer step (``action: stop``, the default) with
                             a :class:`NonFiniteError` naming the step, or skips that step
                             (``action: skip``). Nothing non-finite is ever applied to the
                             weights, so no checkpoint can hold it.
``preemption``               :class:`PreemptionCheckpoint`: SIGTERM requests a stop; at the
                             end of the current optimizer step (all ranks agree) ``last.ckpt``
                             is written and Lightning's ``SIGTERMException`` ends the run.
``step_seed``                :class:`StepSeed`: torch/numpy/python RNGs reseeded before every
                             training batch from ``(seed, batch index, rank)``, so dropout etc.
                             are the same in a straight and a resumed run.
``rank_check``               :class:`RankAgreementCheck`: at the end of training, every rank's
                             digest of parameters, rotation state and optimizer state is
                             all-gathered; a disagreement raises.
==========================  ================================================================

:class:`FaultInjection` (not installed by default) injects a NaN loss, a NaN gradient, a SIGTERM
or an exception at a chosen step, to exercise the above.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import multiprocessing
import os
import random
import signal
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import lightning as L
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

__all__ = ["AtomicCheckpointIO", "NonFiniteError", "NonFiniteGuard", "PreemptionCheckpoint",
           "StepSeed", "RankAgreementCheck", "FaultInjection", "EXIT_PREEMPTED",
           "requires_closure", "check_optimizer", "last_checkpoint_path"]

#: exit status of a run stopped by SIGTERM after saving ``last.ckpt`` (128 + SIGTERM)
EXIT_PREEMPTED = 128 + signal.SIGTERM


# ----------------------------------------------------------------------------------------
# Checkpoint IO
# ----------------------------------------------------------------------------------------

def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` that never leaves a partial checkpoint and never unpickles
    code.

    ``save_checkpoint`` writes ``torch.save`` output to a temporary file in the target's
    directory, flushes and fsyncs it, renames it over the target with ``os.replace`` (atomic on
    POSIX) and fsyncs the directory: a reader sees the old file or the new one, never a torn
    one, and a crash at any point leaves the previous checkpoint intact (a temp file left by a
    killed writer is removed by the next successful save of that target). Remote (fsspec)
    paths fall back to Lightning's transactional save.

    ``load_checkpoint`` uses ``torch.load(weights_only=True)`` unless a caller explicitly asks
    otherwise: adamrot checkpoints hold only tensors and plain Python values.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None
                        ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path)
        path = os.path.abspath(os.fspath(path))
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)
        # temp files of this target left by a writer that was killed (SIGKILL, power loss)
        for stale in Path(directory).glob(f".{os.path.basename(path)}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def load_checkpoint(self, path, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location,
                                       weights_only=True if weights_only is None else weights_only)


def last_checkpoint_path(trainer: "L.Trainer") -> str:
    """Where ``last.ckpt`` goes: the ModelCheckpoint's directory, else
    ``default_root_dir/checkpoints``."""
    cb = trainer.checkpoint_callback
    if isinstance(cb, ModelCheckpoint) and cb.dirpath:
        return os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
    return os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")


# ----------------------------------------------------------------------------------------
# Optimizer checks
# ----------------------------------------------------------------------------------------

def requires_closure(optimizer) -> bool:
    """Whether ``optimizer.step`` (an optimizer or its class) needs a closure: it re-evaluates
    the loss, like LBFGS."""
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    if issubclass(cls, torch.optim.LBFGS):
        return True
    try:
        param = inspect.signature(cls.step).parameters.get("closure")
    except (TypeError, ValueError, AttributeError):
        return False
    return param is not None and param.default is inspect.Parameter.empty


def _import_class(path: Optional[str]):
    if not path or "." not in path:
        return None
    module, _, name = path.rpartition(".")
    try:
        import importlib
        return getattr(importlib.import_module(module), name, None)
    except Exception:  # noqa: BLE001 - unknown classes are jsonargparse's to report
        return None


def check_optimizer(model, name: Optional[str] = None) -> None:
    """Refuse an optimizer that cannot run on ``model`` in its rotation scope, before training.

    Builds the optimizer once on the model's parameter groups (cheap: no state before the
    first step), as :meth:`RotatableModule.build_optimizer` does, and refuses closure-based
    optimizers (LBFGS) in a rotated space: they re-evaluate the loss inside ``step()``, which
    the rotated step (one gradient, rotated once) cannot provide. Raises ``ValueError`` naming
    ``model.optimizer``, the scope and what is allowed. Models without ``param_groups`` /
    ``optimizer_factory`` are not checked.
    """
    factory = getattr(model, "optimizer_factory", None)
    groups_fn = getattr(model, "param_groups", None)
    if factory is None or not callable(groups_fn):
        return
    rotation = getattr(model, "rotation", None)
    active = bool(getattr(rotation, "active", False))
    scope = getattr(rotation, "scope", "none")
    if getattr(rotation, "only", None):
        scope = f"only={dict(rotation.only)}"
    where = f"in rotation scope {scope!r}" if active else "without rotation"
    closure_msg = (
        "re-evaluates the loss (closure) inside step() and cannot run {where}; use it with "
        "model.rotation.scope=none, or an optimizer that takes one gradient per step (AdamW, "
        "SGD, RMSprop, Muon via rotations.zoo.MuonAdamW, the rotations.zoo optimizers)")
    cls = _import_class(name)
    if active and isinstance(cls, type) and requires_closure(cls):
        raise ValueError(f"model.optimizer: {name} " + closure_msg.format(where=where))
    try:
        probe = factory([dict(g) for g in groups_fn()])
    except Exception as e:  # noqa: BLE001 - any constructor error is a config error here
        label = name or getattr(factory, "__name__", repr(factory))
        hint = ""
        if "Muon" in str(label) or "Muon" in str(e):
            hint = ("; torch.optim.Muon takes only 2-D hidden matrices: use "
                    "rotations.zoo.MuonAdamW (Muon for hidden matrices, AdamW for embeddings, "
                    "the LM head and 1-D parameters)")
        raise ValueError(f"model.optimizer: {label} cannot optimize this model {where}: "
                         f"{e}{hint}") from e
    label = name or f"{type(probe).__module__}.{type(probe).__name__}"
    if active and requires_closure(probe):
        raise ValueError(f"model.optimizer: {label} " + closure_msg.format(where=where))


# ----------------------------------------------------------------------------------------
# Non-finite guard
# ----------------------------------------------------------------------------------------

class NonFiniteError(RuntimeError):
    """A non-finite loss, gradient or parameter stopped training."""


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    if not tensors:
        return True
    by_device: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault((t.device, t.dtype), []).append(t)
    flags = []
    for ts in by_device.values():
        norms = torch._foreach_norm(ts, float("inf"))
        flags.append(torch.isfinite(torch.stack(norms)).all())
    return bool(torch.stack(flags).all())


def _finite_value(x) -> Optional[float]:
    """The loss as a float if it is non-finite, else None."""
    if x is None:
        return None
    if isinstance(x, dict):
        x = x.get("loss")
    if isinstance(x, torch.Tensor):
        if x.numel() == 0:
            return None
        v = x.detach().float()
        return None if bool(torch.isfinite(v).all()) else float(v.reshape(-1)[0])
    return None


class NonFiniteGuard(Callback):
    """Stop (or skip) on a non-finite loss or gradient, before the optimizer step.

    The guard wraps each optimizer's ``step``: it runs Lightning's closure (forward, backward,
    ``on_before_optimizer_step`` hooks, gradient clipping) itself, then checks the loss of
    every micro-batch of the step and all gradients (after the DDP all-reduce, unscaling and
    clipping). Under DDP the ranks agree (one boolean all-reduce per step). Then:

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
    already skips inf steps) are checked on the loss only.
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
        self._wrapped: list[tuple[torch.optim.Optimizer, Any]] = []
        self._grad_checked: set[int] = set()  # optimizers whose gradients are checked
        self._grads_ok: Optional[bool] = None
        self._culprits: list[str] = []
        self._names: dict[int, str] = {}

    # -- state (skipped steps survive a resume) ----------------------------------------------
    def state_dict(self) -> dict:
        return {"skipped": list(self.skipped)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = [int(s) for s in state_dict.get("skipped", [])]

    # -- wiring ------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        if self.action == "off":
            return
        self._names = {id(p): n for n, p in pl_module.named_parameters()}
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        for opt in trainer.optimizers:
            grads = scaler is None and not requires_closure(opt)
            if grads:
                self._grad_checked.add(id(opt))
            self._wrap(trainer, opt, check_grads=grads, closure_based=requires_closure(opt))

    def on_train_end(self, trainer, pl_module) -> None:
        self._unwrap()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._unwrap()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._unwrap()

    def _unwrap(self) -> None:
        for opt, original in self._wrapped:
            if original is None:
                opt.__dict__.pop("step", None)
            else:
                opt.step = original
        self._wrapped = []
        self._grad_checked = set()

    def _wrap(self, trainer, opt, check_grads: bool, closure_based: bool) -> None:
        original = opt.__dict__.get("step")   # instance attribute (an LR scheduler's patch)
        inner = opt.step
        guard = self

        def guarded_step(closure=None, *args, **kwargs):
            if closure_based:
                losses = []

                def recording():
                    out = closure()
                    losses.append(out)
                    return out
                # the step re-evaluates the loss itself: check afterwards, stop (no skip)
                out = inner(recording, *args, **kwargs)
                bad = [v for v in map(_finite_value, losses) if v is not None]
                if guard._agree(trainer, bool(bad)):
                    raise NonFiniteError(
                        f"non-finite loss ({bad[0] if bad else 'on another rank'}) at step "
                        f"{trainer.global_step}: training stopped, nothing was saved after it "
                        f"(last checkpoint: {_last_saved(trainer)})")
                guard._after_step(trainer, opt)
                return out
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            if guard._check(trainer, opt, loss, check_grads):
                return loss
            inner(*args, **kwargs)
            guard._after_step(trainer, opt)
            return loss

        if hasattr(inner, "_wrapped_by_lr_sched"):   # keep torch's LR-scheduler bookkeeping
            guarded_step._wrapped_by_lr_sched = True
        opt.step = guarded_step
        self._wrapped.append((opt, original))

    # -- checks ------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # a non-finite loss of a micro-batch whose optimizer step comes later (accumulation)
        if self.action == "off" or trainer.global_step != self._step_at_start:
            return
        v = _finite_value(outputs)
        if v is not None:
            self._pending = f"loss ({v}) of micro-batch {batch_idx}"

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # runs inside the closure, before gradient clipping spreads a NaN to every gradient:
        # check here, and remember which gradients were non-finite in the first place
        self._grads_ok, self._culprits = None, []
        if id(optimizer) not in self._grad_checked:
            return
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self._grads_ok = _all_finite([p.grad for p in params])
        if not self._grads_ok:
            self._culprits = [self._names.get(id(p), "?") for p in params
                              if not bool(torch.isfinite(p.grad).all())]

    def _describe(self, trainer, opt, loss, check_grads: bool) -> Optional[str]:
        problems = []
        if self._pending:
            problems.append(self._pending)
        v = _finite_value(loss)
        if v is not None:
            problems.append(f"loss ({v})")
        if check_grads:
            ok, bad = self._grads_ok, self._culprits
            if ok is None:   # not checked before clipping (hook not reached): check now
                grads = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
                ok = _all_finite([p.grad for p in grads])
                bad = [self._names.get(id(p), "?") for p in grads
                       if not ok and not bool(torch.isfinite(p.grad).all())]
            if not ok:
                shown = ", ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
                problems.append(f"gradient of {shown}")
        self._grads_ok, self._culprits = None, []
        return "; ".join(problems) if problems else None

    def _agree(self, trainer, bad: bool) -> bool:
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        return bad

    def _check(self, trainer, opt, loss, check_grads: bool) -> bool:
        """True when the step must not be taken (skipped); raises to stop."""
        what = self._describe(trainer, opt, loss, check_grads)
        self._pending = None
        if not self._agree(trainer, what is not None):
            self._consecutive = 0
            return False
        step = trainer.global_step
        what = what or "values on another rank"
        if self.action == "skip" and self._consecutive < self.max_consecutive_skips:
            self._consecutive += 1
            self.skipped.append(step)
            opt.zero_grad(set_to_none=True)
            opt._opt_called = True        # a skipped step still counts for the LR scheduler
            rank_zero_warn(f"non-finite {what} at step {step}: optimizer step skipped "
                           f"({self._consecutive} in a row, {len(self.skipped)} in this run)")
            return True
        reason = (f" after {self._consecutive} consecutive skipped steps"
                  if self.action == "skip" else "")
        raise NonFiniteError(
            f"non-finite {what} at step {step}{reason}: training stopped before the optimizer "
            f"step, nothing was saved after it (last checkpoint: {_last_saved(trainer)}). "
            "Set nonfinite.action=skip to skip such steps instead.")

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


# ----------------------------------------------------------------------------------------
# Preemption (SIGTERM)
# ----------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------
# Per-step RNG
# ----------------------------------------------------------------------------------------

class StepSeed(Callback):
    """Reseed torch (CPU and CUDA), numpy and ``random`` before every training batch from
    ``(seed, batch index, global rank)``.

    The RNG state of a training batch is then a function of where it is in the run, not of how
    the process got there (a resume, validation runs, DataLoader iterators drawing seeds), so a
    resumed run draws the same dropout masks as a straight one, and ranks draw different ones.
    ``seed`` defaults to the run's ``seed_everything`` value (``PL_GLOBAL_SEED``); without one,
    nothing is reseeded.
    """

    def __init__(self, enabled: bool = True, seed: Optional[int] = None):
        self.enabled = enabled
        self.seed = seed

    def _base(self) -> Optional[int]:
        if self.seed is not None:
            return int(self.seed)
        env = os.environ.get("PL_GLOBAL_SEED")
        return int(env) if env not in (None, "") else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.enabled:
            return
        base = self._base()
        if base is None:
            return
        index = trainer.fit_loop.epoch_loop.total_batch_idx
        state = np.random.SeedSequence([base & (2 ** 63 - 1), index, trainer.global_rank])
        s64, s32 = state.generate_state(2, np.uint64)
        torch.manual_seed(int(s64) & (2 ** 63 - 1))
        np.random.seed(int(s32) & (2 ** 32 - 1))
        random.seed(int(s64))


# ----------------------------------------------------------------------------------------
# Rank agreement
# ----------------------------------------------------------------------------------------

def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def digest(obj) -> str:
    """sha256 of tensors (dtype, shape, bytes) and plain values, in a canonical order."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def training_digests(pl_module, optimizers) -> dict[str, str]:
    """Digests of the parameters, the rotation state (seeds, fingerprints, SVD bases) and the
    whole optimizer state of this process."""
    out = {"params": digest({n: p for n, p in pl_module.named_parameters()})}
    rot, full = [], []
    for opt in optimizers:
        sd = opt.state_dict()
        rot.append(sd.get("rotation"))
        full.append(sd)
    out["rotation"] = digest(rot)
    out["optimizer"] = digest(full)
    return out


class RankAgreementCheck(Callback):
    """At the end of training, all-gather every rank's :func:`training_digests` (parameters,
    rotation state, optimizer state) and raise ``RuntimeError`` if any differs. Rank 0 writes
    them to ``default_root_dir/rank_agreement.json``. Does nothing on a single process.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.last: Optional[dict] = None

    def _run(self, trainer, pl_module) -> None:
        if not self.enabled or trainer.world_size < 2:
            return
        mine = training_digests(pl_module, trainer.optimizers)
        keys = sorted(mine)
        words = torch.tensor([int(mine[k][i:i + 15], 16) for k in keys for i in range(0, 60, 15)],
                             dtype=torch.int64, device=pl_module.device)
        gathered = trainer.strategy.all_gather(words).reshape(trainer.world_size, -1).cpu()
        per_rank = []
        for r in range(trainer.world_size):
            row = gathered[r].tolist()
            per_rank.append({k: "".join(f"{row[j * 4 + i]:015x}" for i in range(4))
                             for j, k in enumerate(keys)})
        self.last = {"step": trainer.global_step, "ranks": per_rank}
        if trainer.is_global_zero:
            out = Path(trainer.default_root_dir) / "rank_agreement.json"
            with contextlib.suppress(OSError):
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(self.last, indent=1))
        differ = [k for k in keys if len({d[k] for d in per_rank}) > 1]
        if differ:
            raise RuntimeError(f"ranks disagree at step {trainer.global_step} on: "
                               f"{', '.join(differ)} (digests per rank: {per_rank})")

    def on_train_end(self, trainer, pl_module) -> None:
        self._run(trainer, pl_module)


# ----------------------------------------------------------------------------------------
# Fault injection (for tests and drills)
# ----------------------------------------------------------------------------------------

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
