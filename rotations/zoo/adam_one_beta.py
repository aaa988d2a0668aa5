"""AdamW with beta1 = beta2 (Orvieto & Gower 2025; docs/CONVENTIONS.md §5)."""
from __future__ import annotations

from typing import Any

import torch


class AdamOneBeta(torch.optim.AdamW):
    r"""``torch.optim.AdamW`` with ``beta1 = beta2 = beta`` (Orvieto & Gower 2025).

    Their best 160M setting is ``beta = 0.95``. The groups store ``betas = (beta, beta)``
    (so the state dict is an AdamW one); a param group may give ``"beta"`` instead of
    ``"betas"``. Extra keyword arguments (``foreach``, ``fused``, ...) go to AdamW.
    """

    decoupled_weight_decay = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        beta: float = 0.95,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if "betas" in kwargs:
            raise TypeError("AdamOneBeta takes `beta`, not `betas`")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        super().__init__(
            params, lr=lr, betas=(beta, beta), eps=eps, weight_decay=weight_decay, **kwargs
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "beta" in param_group:
            if "betas" in param_group:
                raise ValueError("param group gives both `beta` and `betas`")
            param_group = dict(param_group)
            b = param_group.pop("beta")
            param_group["betas"] = (b, b)
        super().add_param_group(param_group)
