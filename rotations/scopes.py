"""Rotation scopes, reference maths (docs/CONVENTIONS.md §3): which coordinates rotate
together. A :class:`RotationPlan` turns a model's views (:class:`~rotations.layout.LayerView`)
and a :class:`~rotations.config.RotationConfig` into *units*; a unit maps its views'
``(out, in)`` matrices to rotated tensors of the same shapes and back, one layer at a time.
The optimizer runs the same maths batched (:mod:`rotations.batched`, tested against this).
Pure PyTorch.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from .config import RotationConfig
from .layout import LayerView
from .sampling import BlockRotation, block_structure
from .svd import OrthoBasis, svd_factors

#: the dense Haar blocks of a plan may need at most this much memory (float64, as sampled)
MAX_BLOCK_BYTES = 4 << 30


class Unit:
    scope = "none"

    def __init__(self, views: list[LayerView]):
        self.views = views

    @property
    def name(self) -> str:
        return self.views[0].name if len(self.views) == 1 else f"{self.scope}[{len(self.views)}]"

    def rotate(self, mats: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def unrotate(self, mats: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def state(self) -> dict:
        return {}

    def load_state(self, st: dict, device=None) -> None:
        pass


class IdentityUnit(Unit):
    scope = "none"

    def rotate(self, mats):
        return [m.clone() for m in mats]

    def unrotate(self, mats):
        return list(mats)


class _BlockUnit(Unit):
    """Units built from seeded block rotations; state = fingerprints for verification."""

    rotations: dict

    def state(self) -> dict:
        return {"fingerprints": {k: r.fingerprint() for k, r in self.rotations.items()}}

    def load_state(self, st: dict, device=None) -> None:
        saved = st.get("fingerprints", {})
        for k, r in self.rotations.items():
            if k in saved and abs(saved[k] - r.fingerprint()) > 1e-9 * max(1.0, abs(saved[k])):
                raise ValueError(f"checkpoint rotation for {k!r} does not match the rotation "
                                 "regenerated from rotation.seed/block_size: was the config changed?")


class GlobalUnit(_BlockUnit):
    scope = "global"

    def __init__(self, views, cfg: RotationConfig, key: str = "global"):
        super().__init__(views)
        self.sizes = [v.numel for v in views]
        self.R = BlockRotation(sum(self.sizes), cfg.block_size, cfg.seed, key, cfg.permute)
        self.rotations = {key: self.R}

    def rotate(self, mats):
        flat = torch.cat([m.reshape(-1) for m in mats])
        out = self.R.rotate(flat).split(self.sizes)
        return [o.view(v.shape) for o, v in zip(out, self.views)]

    def unrotate(self, mats):
        flat = torch.cat([m.reshape(-1) for m in mats])
        out = self.R.unrotate(flat).split(self.sizes)
        return [o.view(v.shape) for o, v in zip(out, self.views)]


class LayerUnit(_BlockUnit):
    scope = "layerwise"

    def __init__(self, view, cfg):
        super().__init__([view])
        self.R = BlockRotation(view.numel, cfg.block_size, cfg.seed, "layer:" + view.name,
                               cfg.permute)
        self.rotations = {view.name: self.R}

    def rotate(self, mats):
        return [self.R.rotate(mats[0].reshape(-1)).view(self.views[0].shape)]

    def unrotate(self, mats):
        return [self.R.unrotate(mats[0].reshape(-1)).view(self.views[0].shape)]


class RowUnit(_BlockUnit):
    """outputwise: the weights into one output neuron (a row) rotate together: ``G Q_inᵀ``."""

    scope = "outputwise"

    def __init__(self, view, cfg):
        super().__init__([view])
        self.R = BlockRotation(view.shape[1], cfg.block_size, cfg.seed, "row:" + view.name,
                               cfg.permute)
        self.rotations = {view.name: self.R}

    def rotate(self, mats):
        return [self.R.rotate(mats[0], dim=1)]

    def unrotate(self, mats):
        return [self.R.unrotate(mats[0], dim=1)]


class ColUnit(_BlockUnit):
    """inputwise: the weights out of one input neuron (a column) rotate together."""

    scope = "inputwise"

    def __init__(self, view, cfg):
        super().__init__([view])
        self.R = BlockRotation(view.shape[0], cfg.block_size, cfg.seed, "col:" + view.name,
                               cfg.permute)
        self.rotations = {view.name: self.R}

    def rotate(self, mats):
        return [self.R.rotate(mats[0], dim=0)]

    def unrotate(self, mats):
        return [self.R.unrotate(mats[0], dim=0)]


class SVDUnit(Unit):
    """``G -> Uᵀ G V`` with full-rank bases from the SVD of the gradient, refreshed every
    ``svd_refresh_every`` steps (Alg. 5)."""

    scope = "svd"

    def __init__(self, view, cfg):
        super().__init__([view])
        self.dense_max = cfg.svd_dense_max
        self.U: Optional[OrthoBasis] = None
        self.V: Optional[OrthoBasis] = None
        self.refreshed_at = 0
        self.sigma: Optional[torch.Tensor] = None   # singular values of the last refresh

    def refresh_gradient(self) -> torch.Tensor:
        """``Uᵀ G V`` for the gradient ``G`` that defined the current bases: ``diag(S)``
        padded with zeros, exactly (computing it would leave rounding off the diagonal).
        Valid once, right after :meth:`refresh`."""
        if self.sigma is None:
            raise RuntimeError(f"{self.name!r}: no refresh since the last refresh_gradient()")
        S, self.sigma = self.sigma, None
        G = S.new_zeros(self.views[0].shape)
        r = S.numel()
        G[:r, :r].diagonal().copy_(S)
        return G

    def refresh(self, g: torch.Tensor, step: int) -> None:
        U, S, V = svd_factors(g, self.dense_max)
        self.sigma = S
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for b in (U, V):   # bases identical on every rank: rank 0's are authoritative
                for t in (b.dense, b.a, b.tau, b.signs):
                    if t is not None:
                        dist.broadcast(t, src=0)
        self.U, self.V, self.refreshed_at = U, V, step

    def _check(self):
        if self.U is None:
            raise RuntimeError(f"SVD basis of {self.name!r} used before the first refresh")

    def identity_bases(self, dtype, device) -> tuple[OrthoBasis, OrthoBasis]:
        """``(I, I)`` in the stacked form of real bases: the basis of a view that has not
        had a gradient yet (its first refresh waits for one; docs/CONVENTIONS.md §4)."""
        out, inp = self.views[0].shape
        r = min(out, inp)
        return (OrthoBasis.identity(out, r, self.dense_max, dtype, device),
                OrthoBasis.identity(inp, r, self.dense_max, dtype, device))

    def rotate(self, mats):
        if self.U is None:                                              # no gradient yet
            return [mats[0].clone()]
        return [self.U.apply_t(self.V.apply_right(mats[0]))]           # Uᵀ G V

    def unrotate(self, mats):
        if self.U is None:
            return [mats[0].clone()]
        return [self.U.apply(self.V.apply_right_t(mats[0]))]           # U X Vᵀ

    def state(self) -> dict:
        if self.U is None:
            return {"refreshed_at": 0}
        return {"refreshed_at": self.refreshed_at, "U": self.U.state(), "V": self.V.state()}

    def load_state(self, st: dict, device=None) -> None:
        self.refreshed_at = st.get("refreshed_at", 0)
        if "U" in st:
            self.U = OrthoBasis.from_state(st["U"], device)
            self.V = OrthoBasis.from_state(st["V"], device)


class RotationPlan:
    """All units for a model under a config; views in ``none`` scope go to one identity unit."""

    def __init__(self, views: list[LayerView], config: RotationConfig):
        config = config.with_run_seed(None)     # an unresolved seed (no run around it): 0
        check_block_size(views, config)
        self.config = config
        self.views = views
        by_scope: dict[str, list[LayerView]] = {}
        for v in views:
            by_scope.setdefault(config.scope_for(v.ptype), []).append(v)
        units: list[Unit] = []
        for v in views:
            s = config.scope_for(v.ptype)
            if s == "none":
                continue
            if s == "layerwise":
                units.append(LayerUnit(v, config))
            elif s == "outputwise":
                units.append(IdentityUnit([v]) if v.shape[1] == 1 else RowUnit(v, config))
            elif s == "inputwise":
                units.append(IdentityUnit([v]) if v.shape[0] == 1 else ColUnit(v, config))
            elif s == "svd":
                units.append(SVDUnit(v, config))
        if by_scope.get("global"):
            units.append(GlobalUnit(by_scope["global"], config))
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


def rotated_dims(views: list[LayerView], config: RotationConfig) -> list[tuple[str, int]]:
    """``(unit key, d)`` of every block rotation a plan would sample (no sampling)."""
    dims, glob = [], 0
    for v in views:
        s = config.scope_for(v.ptype)
        out, inp = v.shape
        if s == "global":
            glob += out * inp
        elif s == "layerwise":
            dims.append(("layer:" + v.name, out * inp))
        elif s == "outputwise" and inp > 1:
            dims.append(("row:" + v.name, inp))
        elif s == "inputwise" and out > 1:
            dims.append(("col:" + v.name, out))
    if glob:
        dims.append(("global", glob))
    return dims


def check_block_size(views: list[LayerView], config: RotationConfig) -> None:
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
