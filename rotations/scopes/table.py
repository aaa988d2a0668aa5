"""The scope registry: one row per ``rotation.scope`` (docs/CONVENTIONS.md §3). The config's
allowed values, the plan, the optimizer's buckets, the memory estimate, the tests'
parametrisations and the benchmarks all read this table. Adding a scope = one file with its
unit and bucket, one row here, one overlay per architecture (docs/ROTATIONS.md, "Adding a
scope")."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Bucket, Unit
from .global_ import GlobalBucket, GlobalUnit
from .layerwise import LayerBucket, LayerUnit
from .neuronwise import ColBucket, ColUnit, RowBucket, RowUnit
from .none import IdentityBucket, IdentityUnit
from .permutation import PermutationBucket, PermutationUnit
from .svd import SVDBucket, SVDUnit


@dataclass(frozen=True)
class Scope:
    name: str              # the rotation.scope value
    unit: type[Unit]       # reference maths, one layer at a time
    bucket: type[Bucket]   # fast path, many units at once
    rotates: str           # what rotates together, for docs and --help
    mixes: bool = True     # mixes coordinates (False: coordinate-wise optimizers such as
                           # Adam are exactly equivariant to it)
    paper: bool = True     # a scope of the papers (False: our own addition)


SCOPES: dict[str, Scope] = {s.name: s for s in [
    Scope("none", IdentityUnit, IdentityBucket, "nothing (the standard basis)", mixes=False),
    Scope("global", GlobalUnit, GlobalBucket, "all parameters as one vector"),
    Scope("layerwise", LayerUnit, LayerBucket, "the entries of each layer"),
    Scope("outputwise", RowUnit, RowBucket, "the weights into each output neuron (rows)"),
    Scope("inputwise", ColUnit, ColBucket, "the weights out of each input neuron (columns)"),
    Scope("svd", SVDUnit, SVDBucket, "each layer in the SVD basis of its gradient"),
    Scope("permutation", PermutationUnit, PermutationBucket,
          "each layer's entries reordered, none mixed (a control)", mixes=False, paper=False),
]}

#: the allowed values of ``rotation.scope``, in table order
SCOPE_NAMES: tuple[str, ...] = tuple(SCOPES)
