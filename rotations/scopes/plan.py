"""A model's views and a rotation config -> units (:class:`RotationPlan`), the one
``rotation.block_size`` rule, and the buckets of the fast path (:func:`build_buckets`), all
read from the scope table (:mod:`.table`). Pure PyTorch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..layout import LayerView
from ..memory import check_sampling
from ..sampling import block_structure
from .base import Bucket, Unit
from .svd import SVDUnit
from .table import SCOPES

if TYPE_CHECKING:
    from ..config import RotationConfig

#: the dense Haar blocks of a plan may need at most this much memory (float64, as sampled)
MAX_BLOCK_BYTES = 4 << 30


def _by_scope(views: list[LayerView], config) -> dict[str, list[LayerView]]:
    """The views of each scope the config uses, in view order."""
    out: dict[str, list[LayerView]] = {}
    for v in views:
        out.setdefault(config.scope_for(v.ptype), []).append(v)
    return out


class RotationPlan:
    """All units for a model under a config; views in ``none`` scope go to one identity unit."""

    def __init__(self, views: list[LayerView], config: "RotationConfig"):
        config = config.with_run_seed(None)     # an unresolved seed (no run around it): 0
        check_block_size(views, config)
        self.config = config
        self.views = views
        by_scope = _by_scope(views, config)
        units: list[Unit] = []
        for name, vs in by_scope.items():       # per-view units in view order, joint last
            if name != "none" and not SCOPES[name].unit.joint:
                units += SCOPES[name].unit.build(vs, config)
        order = {v.name: i for i, v in enumerate(views)}
        units.sort(key=lambda u: order[u.views[0].name])
        for name, vs in by_scope.items():
            if name != "none" and SCOPES[name].unit.joint:
                units += SCOPES[name].unit.build(vs, config)
        self.units = units
        self.identity_views = by_scope.get("none", [])

    @property
    def svd_units(self) -> list[SVDUnit]:
        return [u for u in self.units if isinstance(u, SVDUnit)]

    def unit_of(self) -> dict:
        return {v.name: u for u in self.units for v in u.views}

    def state_dict(self) -> dict:
        return {"config": self.config.to_dict(),
                "units": {u.name: u.state() for u in self.units}}

    def load_state_dict(self, sd: dict, device=None) -> None:
        saved = sd.get("config", {})
        mine = self.config.to_dict()
        for key in ("scope", "block_size", "seed", "only", "permute"):
            if key in saved and saved[key] != mine[key]:
                raise ValueError(f"checkpoint was trained with rotation.{key}={saved[key]!r} "
                                 f"but the config says rotation.{key}={mine[key]!r}")
        units = sd.get("units", {})
        names = {u.name for u in self.units}
        if set(units) != names:
            raise ValueError("checkpoint rotation units do not match this model/config "
                             f"({len(units)} saved vs {len(names)} now)")
        for u in self.units:
            u.load_state(units[u.name], device)


def rotated_dims(views: list[LayerView], config) -> list[tuple[str, int]]:
    """``(unit key, d)`` of every block rotation a plan would sample (no sampling), per
    scope as its unit says (:meth:`Unit.dims`)."""
    dims = []
    for name, vs in _by_scope(views, config).items():
        dims += SCOPES[name].unit.dims(vs)
    return dims


def check_block_size(views: list[LayerView], config: "RotationConfig") -> None:
    """One rule for every scope: each rotation of dimension ``d`` samples dense Haar blocks
    of ``n = min(block_size, d)`` (and a residual ``p < n``); together, in float64, they
    may need at most :data:`MAX_BLOCK_BYTES`. Raises ``ValueError`` naming
    ``rotation.block_size`` and the memory it would need, before anything is sampled."""
    total, worst = 0, (0, "")
    for key, d in rotated_dims(views, config):
        n, _, p = block_structure(d, config.block_size)
        total += 8 * (n * n + p * p)
        worst = max(worst, (n, key))
    if total > MAX_BLOCK_BYTES:
        raise ValueError(
            f"rotation.block_size={config.block_size} is impossible for this model under "
            f"{config.scope if not config.only else 'rotation.only'}: its dense rotation blocks "
            f"would need {total / 2**30:.1f} GiB (largest {worst[0]} x {worst[0]}, "
            f"{worst[1]!r}); at most {MAX_BLOCK_BYTES / 2**30:.0f} GiB. Use a smaller "
            "block_size (the paper uses 768).")
    check_sampling(rotated_dims(views, config), config.block_size)   # time and host memory


def build_buckets(units: list[Unit], device=None) -> list[Bucket]:
    """Group units into buckets: one per scope, compute dtype, device and structure (the
    bucket class's :meth:`Bucket.key`); identity views of one dtype/device share one."""
    keyed: dict[tuple, tuple] = {}
    for u in units:
        cls = SCOPES[u.scope].bucket
        for part in cls.parts(u):
            v0 = part.views[0]
            dev = torch.device(device) if device is not None else v0.param.device
            key = (u.scope,) + cls.key(part) + (cls.dtype_of(part), str(dev))
            keyed.setdefault(key, (cls, []))[1].append(part)
    return [cls(us, key[-1], key[-2]) for key, (cls, us) in keyed.items()]
