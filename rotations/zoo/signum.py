"""Signum: sign of a momentum buffer (docs/CONVENTIONS.md §5)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch.optim import Optimizer

from ._util import _check_nonneg, _grad_of


class Signum(Optimizer):
    r"""Signum: sign of an exponential moving average of the gradient.

    Convention (Bernstein et al. 2018, Alg. 3; Orvieto & Gower 2025), zero-initialised
    buffer, state key ``"momentum_buffer"``::

        m <- momentum * m + (1 - momentum) * g
        d <- (1 - momentum) * g + momentum * m     if nesterov   (as torch.optim.Muon)
             m                                   otherwise
        p <- p * (1 - lr * weight_decay) - lr * sign(d)

    The ``(1 - momentum)`` factor only rescales the buffer, so ``sign(d)`` is the same as
    with an SGD-style buffer ``b <- momentum * b + g`` (``torch.optim.SGD``, dampening 0,
    nesterov ``g + momentum * b``); the choice matters only for reading the stored buffer.
    With ``momentum = 0`` this is :class:`SignSGD`. ``sign(0) = 0``.
    """

    decoupled_weight_decay = True

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        _check_nonneg("lr", lr)
        _check_nonneg("weight_decay", weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum <= 0.0:
            raise ValueError("nesterov momentum requires momentum > 0")
        super().__init__(
            params,
            {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov},
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta, nesterov = group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = _grad_of(p)
                if beta != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["momentum_buffer"] = buf
                    buf.mul_(beta).add_(g, alpha=1.0 - beta)
                    d = torch.add(g * (1.0 - beta), buf, alpha=beta) if nesterov else buf
                else:
                    d = g
                if wd != 0:
                    p.mul_(1.0 - lr * wd)
                p.add_(torch.sign(d), alpha=-lr)
        return loss
