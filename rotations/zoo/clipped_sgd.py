"""SGD on a globally or coordinate-wise clipped gradient (docs/CONVENTIONS.md §5)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ._util import _check_nonneg, _grad_of, _raw_step


_CLIP_MODES = ("global", "coordinate")


class ClippedSGD(torch.optim.SGD):
    r"""``torch.optim.SGD`` (heavy ball, optional Nesterov) on a clipped gradient.

    * ``mode="global"``: the gradient of *all* parameters of the optimizer (every group
      whose mode is ``"global"``), seen as one vector, is scaled by
      ``min(1, clip / ||g||_2)`` (no epsilon; ``||g|| = 0`` leaves it unchanged). The norm
      is accumulated in (at least) fp32. If global groups have different ``clip`` values, each group
      uses its own ``clip`` against the common norm.
    * ``mode="coordinate"``: every entry is clamped to ``[-clip, clip]``.

    The clipped gradient is handed to ``torch.optim.SGD.step`` unchanged, so the update is
    exactly SGD's (``dampening = 0``, SGD's momentum buffer ``b <- momentum * b + g``).
    ``p.grad`` is restored afterwards (clipping does not modify the caller's gradient).

    Weight decay is **coupled** (L2, as in ``torch.optim.SGD``) and is added *after*
    clipping: ``g_sgd = clip(g) + weight_decay * p`` — i.e. this equals
    ``clip_grad_norm_`` followed by ``torch.optim.SGD``. Since the decay term enters after a
    non-linear step, it cannot be added to the gradient before rotating:
    ``weight_decay_mode = "in_rule"`` tells the rotation engine to hand the optimizer the
    rotated weights (docs/CONVENTIONS.md §5).
    """

    decoupled_weight_decay = False
    weight_decay_mode = "in_rule"

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        *,
        clip: float,
        mode: str = "global",
        weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        _check_nonneg("lr", lr)
        if not (isinstance(clip, (int, float)) and clip > 0):
            raise ValueError(f"clip must be a float > 0, got {clip!r}")
        if mode not in _CLIP_MODES:
            raise ValueError(f"mode must be one of {_CLIP_MODES}, got {mode!r}")
        if kwargs.get("dampening", 0) != 0:
            raise ValueError("ClippedSGD uses dampening = 0")
        self._clip_defaults = {"clip": float(clip), "mode": mode}
        super().__init__(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
            **kwargs,
        )
        self.defaults.update(self._clip_defaults)  # pickled with the optimizer

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        src = self.defaults if "clip" in self.defaults else self._clip_defaults
        for k in ("clip", "mode"):
            param_group.setdefault(k, src[k])
        if param_group["mode"] not in _CLIP_MODES:
            raise ValueError(f"mode must be one of {_CLIP_MODES}, got {param_group['mode']!r}")
        if not param_group["clip"] > 0:
            raise ValueError(f"clip must be > 0, got {param_group['clip']!r}")
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        src = self.defaults if "clip" in self.defaults else getattr(self, "_clip_defaults", {})
        for group in self.param_groups:
            for k, v in src.items():
                if k in ("clip", "mode"):
                    group.setdefault(k, v)

    @torch.no_grad()
    def clipped_grads(self) -> dict[Tensor, Tensor]:
        """The clipped gradient of every parameter that has one (new tensors)."""
        out: dict[Tensor, Tensor] = {}
        global_params = [
            p for g in self.param_groups if g["mode"] == "global"
            for p in g["params"] if p.grad is not None
        ]
        norm = None
        if global_params:
            dev = global_params[0].grad.device
            norms = [
                torch.linalg.vector_norm(
                    _grad_of(p), dtype=torch.promote_types(p.grad.dtype, torch.float32)
                ).to(device=dev, dtype=torch.float64)
                for p in global_params
            ]
            norm = torch.linalg.vector_norm(torch.stack(norms))
        for group in self.param_groups:
            clip = group["clip"]
            if group["mode"] == "global":
                scale = None if norm is None else torch.clamp(clip / norm, max=1.0)
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = _grad_of(p)
                if group["mode"] == "coordinate":
                    out[p] = g.clamp(-clip, clip)
                else:
                    out[p] = g * scale.to(device=g.device, dtype=g.dtype)
        return out

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clipped = self.clipped_grads()
        originals = {p: p.grad for p in clipped}
        try:
            for p, g in clipped.items():
                p.grad = g
            _raw_step(torch.optim.SGD)(self)
        finally:
            for p, g in originals.items():
                p.grad = g
        return loss
