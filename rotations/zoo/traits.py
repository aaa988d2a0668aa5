"""What the rotation engine, the model, the pre-run checks and the callbacks need to know
about an optimizer, asked in one place (docs/CONVENTIONS.md §5): :func:`traits`.

* ``weight_decay`` — how its decay composes with a rotation (:mod:`.weight_decay`);
* ``closure`` — ``step()`` re-evaluates the loss (LBFGS): impossible in a rotated space and
  stepped differently by the non-finite guard;
* ``split_views`` — every LayerView needs its own tensor even when unrotated (Muon: fused
  Q/K/V are three matrices);
* ``view_options`` — extra base-optimizer group options per view (Muon: ``use_muon``), the
  parameter-group policy.

An optimizer class states the last two with the class attributes ``requires_split_views``
and ``view_options(view) -> dict`` (a static or class method); ``torch.optim`` classes have
neither. Pure PyTorch.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch.optim import Optimizer

from .weight_decay import weight_decay_mode


@dataclass(frozen=True)
class OptimizerTraits:
    weight_decay: str
    closure: bool
    split_views: bool
    view_options: Optional[Callable] = None


def requires_closure(opt_or_cls: Union[Optimizer, type]) -> bool:
    """Whether ``step`` (of an optimizer or its class) needs a closure: it re-evaluates the
    loss, like LBFGS."""
    cls = opt_or_cls if isinstance(opt_or_cls, type) else type(opt_or_cls)
    if issubclass(cls, torch.optim.LBFGS):
        return True
    try:
        param = inspect.signature(cls.step).parameters.get("closure")
    except (TypeError, ValueError, AttributeError):
        return False
    return param is not None and param.default is inspect.Parameter.empty


def traits(opt: Optimizer) -> OptimizerTraits:
    """The traits of an optimizer instance (built on the model's groups; cheap before the
    first step)."""
    cls = type(opt)
    return OptimizerTraits(weight_decay=weight_decay_mode(opt), closure=requires_closure(cls),
                           split_views=bool(getattr(cls, "requires_split_views", False)),
                           view_options=getattr(cls, "view_options", None))
