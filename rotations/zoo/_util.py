"""Helpers shared by the zoo optimizers."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def _check_nonneg(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value >= 0.0):
        raise ValueError(f"{name} must be a float >= 0, got {value!r}")


def _raw_step(cls: type) -> Callable:
    """``cls.step`` without torch's profiling/hook wrapper.

    ``Optimizer._patch_step_function`` wraps ``step`` so that step hooks run; a subclass
    (or composite) that calls another class's ``step`` itself must call the unwrapped
    function, or the instance's hooks would run twice.
    """
    fn = cls.step
    while getattr(fn, "hooked", False) and hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


def _grad_of(p: Tensor) -> Tensor:
    g = p.grad
    if g.is_sparse:
        raise RuntimeError("sparse gradients are not supported")
    if torch.is_complex(p):
        raise RuntimeError("complex parameters are not supported")
    return g
