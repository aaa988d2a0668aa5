"""Checks of a configuration that need the instantiated model, run by ``adamrot fit`` before
anything is written (docs/RUNS.md)."""
from __future__ import annotations

from typing import Optional

from rotations.zoo import requires_closure

__all__ = ["check_optimizer"]


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
