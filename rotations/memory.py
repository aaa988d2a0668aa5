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
    buckets = getattr(opt, "buckets", None)
    if buckets is None:                    # older engines (benchmarks --baseline)
        buckets = opt._buckets
    shadow = [b.buffer for b in buckets]
    skip = ("buffer", "shadows", "views", "config", "_rotate", "_unrotate")
    rot: list = []
    seen: set = set()
    for b in buckets:
        _walk(b, seen, rot, skip)
    for u in opt.plan.units:
        _walk(u, seen, rot, skip)
    shadow_keys = {_storage_key(t) for t in shadow}
    base_keys = {_storage_key(t) for t in base}
    return {"base_state": _sum_unique(base), "shadow": _sum_unique(shadow),
            "rotation": _sum_unique(rot, exclude=shadow_keys | base_keys)}


# ---- the cost of sampling a rotation, checked before anything is sampled --------------------

#: float64 throughput assumed for sampling the Haar blocks (QR on the CPU, every rank and every
#: resume): about what a 2-core CPU reached for n = 3000 (23 GFLOP/s counting 8/3 n^3 per QR);
#: a many-core node is faster, so the bound errs on the side of allowing
SAMPLE_FLOPS_PER_S = 2.0e10
#: the longest sampling the rule allows, in seconds at :data:`SAMPLE_FLOPS_PER_S`
MAX_SAMPLE_SECONDS = 120.0


def qr_flops(n: int) -> float:
    """Floating-point operations of a Haar block of size ``n``: Householder QR of an ``n x n``
    Gaussian (4/3 n^3) and forming ``Q`` (4/3 n^3)."""
    return 8.0 / 3.0 * float(n) ** 3


def host_memory_bytes() -> int:
    """Physical memory of this machine (0 when unknown)."""
    import os

    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def sampling_cost(dims, block_size: int) -> dict:
    """What sampling the rotation blocks of ``dims`` (``[(unit key, d)]``, as
    ``rotations.scopes.rotated_dims`` lists them) costs with ``block_size``: each unit
    samples one Haar block of ``n = min(block_size, d)`` and one of the residual ``p``, in
    float64. Returns ``seconds`` (at :data:`SAMPLE_FLOPS_PER_S`), ``flops``, ``bytes`` (the
    peak: the blocks of every unit held, plus the Gaussian and ``R`` of the largest QR) and
    ``largest`` (``(n, key)``)."""
    flops, held, largest = 0.0, 0, (0, "")
    for key, d in dims:
        n = min(int(block_size), int(d))
        k = int(d) // n
        p = int(d) - k * n
        flops += qr_flops(n) + (qr_flops(p) if p else 0.0)
        held += 8 * (n * n + p * p)
        largest = max(largest, (n, key))
    peak = held + 2 * 8 * largest[0] ** 2
    return {"seconds": flops / SAMPLE_FLOPS_PER_S, "flops": flops, "bytes": peak,
            "largest": largest}


def check_sampling(dims, block_size: int, max_seconds: float = MAX_SAMPLE_SECONDS,
                   memory_bytes: int | None = None) -> dict:
    """Raise ``ValueError`` naming ``rotation.block_size``, the need and the limit when
    sampling would take more than ``max_seconds`` or need more than ``memory_bytes`` (default:
    this machine's physical memory); returns :func:`sampling_cost` otherwise."""
    dims = list(dims)
    cost = sampling_cost(dims, block_size)
    limit = host_memory_bytes() if memory_bytes is None else memory_bytes
    n, key = cost["largest"]
    where = f"largest block {n} x {n}, {key!r}; {len(dims)} unit(s)"
    if cost["seconds"] > max_seconds:
        raise ValueError(
            f"rotation.block_size={block_size}: sampling the rotation blocks would take about "
            f"{cost['seconds']:.0f} s of float64 QR ({cost['flops']:.2e} flop at an assumed "
            f"{SAMPLE_FLOPS_PER_S:.0e} flop/s; {where}) on every start and resume; at most "
            f"{max_seconds:.0f} s. Use a smaller block_size (the paper uses 768).")
    if limit and cost["bytes"] > limit:
        raise ValueError(
            f"rotation.block_size={block_size}: sampling the rotation blocks needs "
            f"{cost['bytes'] / 2**30:.1f} GiB ({where}); this machine has "
            f"{limit / 2**30:.1f} GiB. Use a smaller block_size (the paper uses 768).")
    return cost
