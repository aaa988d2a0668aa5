"""Rotation scopes (docs/CONVENTIONS.md §3): which coordinates rotate together.

One file per scope holds its *unit* (reference maths, one layer at a time) and its *bucket*
(the optimizer's fast path, many layers in one batched operation, tested against the
unit); :mod:`.table` is the registry every other part reads; :mod:`.plan` turns a model's
views and a :class:`~rotations.config.RotationConfig` into units and buckets. Imports only
the rest of ``rotations`` (never the config: it reads the table) and torch.
"""
from .base import Bucket, BlockUnit, FlatBucket, Unit, VectorBucket, compute_dtype
from .global_ import GlobalBucket, GlobalUnit
from .layerwise import LayerBucket, LayerUnit
from .neuronwise import ColBucket, ColUnit, RowBucket, RowUnit
from .none import IdentityBucket, IdentityUnit
from .permutation import PermutationBucket, PermutationUnit
from .plan import MAX_BLOCK_BYTES, RotationPlan, build_buckets, check_block_size, rotated_dims
from .svd import SVDBucket, SVDUnit
from .table import SCOPE_NAMES, SCOPES, Scope

__all__ = [
    "SCOPES", "SCOPE_NAMES", "Scope", "RotationPlan", "build_buckets", "check_block_size",
    "rotated_dims", "MAX_BLOCK_BYTES", "Unit", "BlockUnit", "Bucket", "FlatBucket",
    "VectorBucket", "compute_dtype", "IdentityUnit", "IdentityBucket", "GlobalUnit",
    "GlobalBucket", "LayerUnit", "LayerBucket", "RowUnit", "RowBucket", "ColUnit",
    "ColBucket", "SVDUnit", "SVDBucket", "PermutationUnit", "PermutationBucket",
]
