"""The ``model.rotation`` section of a config (docs/CONVENTIONS.md §2–4).

```yaml
model:
  rotation:
    scope: global          # none | global | layerwise | outputwise | inputwise | svd | permutation
    block_size: 768        # n of the block construction (App. A.3)
    seed: null             # null: the run's seed (seed_everything); rotations are regenerated
                           # bit-exactly from it
    svd_refresh_every: 200 # F of Alg. 5 (250 in the NeurIPS version)
    svd_moments: keep      # keep (Alg. 5) | reproject (carry first moments into the new basis)
    only: {value: layerwise}   # architecture-aware (App. C.2): listed types only, rest unrotated
```
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal, Optional

from .layout import PARAM_TYPES

from .scopes.table import SCOPE_NAMES

#: allowed values of rotation.scope: the scope table's names (rotations/scopes/table.py)
SCOPES = SCOPE_NAMES
SVD_MOMENTS = ("keep", "reproject")
Scope = Literal[SCOPE_NAMES]


@dataclass
class RotationConfig:
    """Which rotation the optimizer runs in. Validated on construction."""

    scope: Scope = "none"
    block_size: int = 768
    seed: Optional[int] = None     # None: the run's seed (see with_run_seed)
    svd_refresh_every: int = 200
    svd_moments: Literal["keep", "reproject"] = "keep"
    only: Optional[dict[str, Scope]] = None
    permute: bool = True
    svd_dense_max: int = 4096

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"rotation.scope: {self.scope!r} is not allowed; "
                             f"choose one of {', '.join(SCOPES)}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or self.seed < 0):
            raise ValueError(f"rotation.seed must be a non-negative integer or null (the run's "
                             f"seed), got {self.seed!r}")
        for name in ("block_size", "svd_refresh_every", "svd_dense_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"rotation.{name} must be a positive integer, got {v!r}")
        if self.svd_moments not in SVD_MOMENTS:
            raise ValueError(f"rotation.svd_moments: {self.svd_moments!r} is not allowed; "
                             f"choose one of {', '.join(SVD_MOMENTS)}")
        if self.only is not None:
            if not isinstance(self.only, dict):
                raise ValueError("rotation.only must be a map from parameter type to scope")
            if self.scope != "none":
                raise ValueError("rotation.scope must be 'none' when rotation.only is set "
                                 "(types not listed in rotation.only are never rotated)")
            for ptype, scope in self.only.items():
                if ptype not in PARAM_TYPES:
                    raise ValueError(f"rotation.only: unknown parameter type {ptype!r}; "
                                     f"allowed: {', '.join(PARAM_TYPES)}")
                if scope not in SCOPES:
                    raise ValueError(f"rotation.only.{ptype}: {scope!r} is not allowed; "
                                     f"choose one of {', '.join(SCOPES)}")

    @property
    def active(self) -> bool:
        """Whether anything is rotated at all."""
        if self.only:
            return any(s != "none" for s in self.only.values())
        return self.scope != "none"

    def scope_for(self, ptype: str) -> str:
        if self.only is not None:
            return self.only.get(ptype, "none")
        return self.scope

    def svd_refresh_due(self, step: int) -> bool:
        """Whether rotated-optimizer step ``step`` (1, 2, …) refreshes the SVD bases: steps
        ``1, 1 + F, 1 + 2F, …`` (docs/CONVENTIONS.md §4)."""
        return (step - 1) % self.svd_refresh_every == 0

    def svd_refreshes_until(self, step: int) -> int:
        """How many scheduled refreshes steps ``1 … step`` hold."""
        return (step - 1) // self.svd_refresh_every + 1 if step >= 1 else 0

    def with_run_seed(self, run_seed: Optional[int]) -> "RotationConfig":
        """This config with ``seed`` resolved: an explicit ``rotation.seed`` is kept (pinned),
        ``None`` becomes the run's seed, so seeds vary the rotation together with the
        initialisation and the data order (docs/CONVENTIONS.md §2); 0 when the run has no
        seed either."""
        if self.seed is not None:
            return self
        return replace(self, seed=0 if run_seed is None else int(run_seed))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["only"] = dict(self.only) if self.only else None
        return d

    @classmethod
    def coerce(cls, value) -> "RotationConfig":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"rotation: unknown key(s) {sorted(unknown)}; allowed: "
                                 f"{', '.join(cls.__dataclass_fields__)}")
            return cls(**value)
        # jsonargparse Namespace or similar
        return cls(**{k: getattr(value, k) for k in cls.__dataclass_fields__ if hasattr(value, k)})

