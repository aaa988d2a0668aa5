"""What a :class:`~rotations.optimizer.RotatedOptimizer` holds in memory, by tensor bytes
(including what ``state_dict()`` does not show: permutations, stacked blocks, bases, index
caches). Used by the tests of the memory floor and by benchmarks/rotation_overhead.py (which
also loads this file on its own to measure older versions, hence no package imports);
docs/ROTATIONS.md states the floor per scope. Pure PyTorch.
"""
from __future__ import annotations

import torch


def _storage_key(t: torch.Tensor):
    if t.device.type == "meta":
        return ("meta", id(t))
    return (str(t.device), t.untyped_storage().data_ptr())


def _nbytes(t: torch.Tensor) -> int:
    if t.device.type == "meta":
        return t.numel() * t.element_size()
    return t.untyped_storage().nbytes()


def _walk(obj, seen_obj: set, out: list, skip: tuple) -> None:
    """Collect tensors reachable from ``obj`` through the rotation engine's own objects."""
    if isinstance(obj, torch.Tensor):
        out.append(obj)
        return
    if isinstance(obj, (list, tuple)):
        for x in obj:
            _walk(x, seen_obj, out, skip)
        return
    if isinstance(obj, dict):
        for x in obj.values():
            _walk(x, seen_obj, out, skip)
        return
    if type(obj).__name__ == "LayerView" or id(obj) in seen_obj:
        return
    if type(obj).__module__.startswith("rotations.") and hasattr(obj, "__dict__"):
        seen_obj.add(id(obj))
        for k, x in vars(obj).items():
            if k not in skip:
                _walk(x, seen_obj, out, skip)


def _sum_unique(tensors, exclude=frozenset()) -> int:
    seen, total = set(exclude), 0
    for t in tensors:
        k = _storage_key(t)
        if k not in seen:
            seen.add(k)
            total += _nbytes(t)
    return total


def optimizer_bytes(opt) -> dict:
    """Bytes held by a rotated optimizer, each storage counted once:

    * ``base_state``: the wrapped optimizer's state (moments, momentum, step counters);
    * ``shadow``: the buckets' shadow buffers (one per bucket, the size of the rotated views);
    * ``rotation``: everything else of the rotation itself (permutations, dense blocks,
      stacked blocks, index caches, SVD bases), on any device.
    """
    base = [t for st in opt.base.state.values() for t in st.values()
            if isinstance(t, torch.Tensor)]
    shadow = [b.buffer for b in opt._buckets]
    skip = ("buffer", "shadows", "views", "config", "_rotate", "_unrotate")
    rot: list = []
    seen: set = set()
    for b in opt._buckets:
        _walk(b, seen, rot, skip)
    for u in opt.plan.units:
        _walk(u, seen, rot, skip)
    shadow_keys = {_storage_key(t) for t in shadow}
    base_keys = {_storage_key(t) for t in base}
    return {"base_state": _sum_unique(base), "shadow": _sum_unique(shadow),
            "rotation": _sum_unique(rot, exclude=shadow_keys | base_keys)}
