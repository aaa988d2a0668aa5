"""signSGD (docs/CONVENTIONS.md §5)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch.optim import Optimizer

from ._util import _check_nonneg, _grad_of


class SignSGD(Optimizer):
    r"""signSGD (Bernstein et al. 2018) with decoupled weight decay.

    ``p <- p * (1 - lr * weight_decay) - lr * sign(g)``, with ``sign(0) = 0``
    (``torch.sign``). No optimizer state.
    """

    decoupled_weight_decay = True

    def __init__(self, params, lr: float, weight_decay: float = 0.0) -> None:
        _check_nonneg("lr", lr)
        _check_nonneg("weight_decay", weight_decay)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = _grad_of(p)
                if wd != 0:
                    p.mul_(1.0 - lr * wd)
                p.add_(torch.sign(g), alpha=-lr)
        return loss
