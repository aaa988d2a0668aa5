"""How each optimizer's weight decay composes with a rotation (docs/CONVENTIONS.md §5): the
registry the rotation engine reads."""
from __future__ import annotations

from typing import Union

import torch
from torch.optim import Optimizer


# torch.optim classes by how their weight decay works (class defaults). Adam, NAdam and
# RAdam take a `decoupled_weight_decay` option stored in their groups: an *instance* is
# judged by its groups.
DECOUPLED_WEIGHT_DECAY: dict[type, bool] = {
    torch.optim.AdamW: True,
    torch.optim.Muon: True,
    torch.optim.Adafactor: True,
    torch.optim.Adam: False,
    torch.optim.NAdam: False,
    torch.optim.RAdam: False,
    torch.optim.SGD: False,
    torch.optim.RMSprop: False,
    torch.optim.Adagrad: False,
    torch.optim.Adadelta: False,
    torch.optim.Adamax: False,
    torch.optim.ASGD: False,
}


def is_decoupled(opt_or_cls: Union[Optimizer, type]) -> bool:
    """Whether an optimizer (class or instance) applies decoupled weight decay.

    Order: a boolean class attribute ``decoupled_weight_decay`` (the classes of this
    module); for an instance, the ``decoupled_weight_decay`` key of its param groups
    (``torch.optim.Adam(..., decoupled_weight_decay=True)`` is decoupled; mixed groups are
    an error); otherwise :data:`DECOUPLED_WEIGHT_DECAY` along the MRO. Unknown classes
    (and those without weight decay: LBFGS, Rprop, SparseAdam) raise ``ValueError``.
    """
    cls = opt_or_cls if isinstance(opt_or_cls, type) else type(opt_or_cls)
    attr = getattr(cls, "decoupled_weight_decay", None)
    if isinstance(attr, bool):
        return attr
    if not isinstance(opt_or_cls, type):
        flags = {
            bool(g["decoupled_weight_decay"])
            for g in opt_or_cls.param_groups if "decoupled_weight_decay" in g
        }
        if len(flags) > 1:
            raise ValueError(f"{cls.__name__} has groups with both coupled and decoupled decay")
        if flags:
            return flags.pop()
    for base in cls.__mro__:
        if base in DECOUPLED_WEIGHT_DECAY:
            return DECOUPLED_WEIGHT_DECAY[base]
    raise ValueError(
        f"unknown weight decay convention for {cls.__module__}.{cls.__qualname__}: give the "
        "class a boolean attribute `decoupled_weight_decay`"
    )


#: how an optimizer's weight decay composes with a rotation ``R`` (docs/CONVENTIONS.md §5)
WEIGHT_DECAY_MODES = {
    "none": "the optimizer has no weight_decay",
    "decoupled": "w <- w - lr*wd*w after the rule; commutes with R (applied in the standard basis)",
    "coupled": "g <- g + wd*w before the rule; linear, so R(g + wd*w) = Rg + wd*Rw (added "
               "before rotating)",
    "in_rule": "the rule uses w after a non-linear step (ClippedSGD: clip(g) + wd*w); the "
               "optimizer is given the rotated weights Rw",
}


def weight_decay_mode(opt: Optimizer) -> str:
    """One of :data:`WEIGHT_DECAY_MODES` for an optimizer instance: ``"none"`` without a
    ``weight_decay`` default, else a string class attribute ``weight_decay_mode``, else
    ``"decoupled"``/``"coupled"`` from :func:`is_decoupled`."""
    if "weight_decay" not in opt.defaults:
        return "none"
    mode = getattr(type(opt), "weight_decay_mode", None)
    if isinstance(mode, str):
        if mode not in WEIGHT_DECAY_MODES:
            raise ValueError(f"{type(opt).__name__}.weight_decay_mode = {mode!r}; allowed: "
                             f"{', '.join(WEIGHT_DECAY_MODES)}")
        return mode
    return "decoupled" if is_decoupled(opt) else "coupled"
