"""Measurements of a model in the rotated parameter space an optimizer runs in: gradients,
Hessian rows and their block partition, ``‖H‖_(1,1)/d`` estimators with intervals, update
orthogonality and the optimizer state per view (docs/CONVENTIONS.md §6). Pure PyTorch and
model-agnostic: the caller supplies ``loss_fn(model, batch)``.

* :mod:`.space` — :class:`RotatedSpace`, the flat slot layout, ``R``/``Rᵀ``, partitions;
* :mod:`.curvature` — gradient bound, Hessian-vector products and rows, block contributions;
* :mod:`.estimators` — (1,1)-norm from rows, exact, Cauchy cross-check;
* :mod:`.intervals` — confidence intervals and the rows/directions they need;
* :mod:`.orthogonality` — CV and SVD entropy of an update matrix;
* :mod:`.state` — optimizer state per view, Adam's update direction;
* :mod:`.moments` — Adam with β1 = β2 read as a gradient mean / variance estimate.
"""
from .curvature import (BLOCKS, LossFn, block_contributions, gradient_linf_bound, hessian_rows,
                        partition_row, rotated_gradient, rotated_hvps)
from .estimators import (cauchy_scale_estimate, cauchy_vector, one_one_norm_cauchy,
                         one_one_norm_estimate, one_one_norm_exact)
from .moments import adam_moment_stats
from .intervals import (difference_interval, evidence, mean_interval, nested_interval,
                        rows_needed, t_quantile)
from .orthogonality import update_orthogonality, update_orthogonality_tensor
from .space import Coordinate, RotatedSpace
from .state import ViewState, adam_direction, adam_update_views, view_states

__all__ = [
    "RotatedSpace", "Coordinate", "LossFn", "rotated_gradient", "gradient_linf_bound",
    "rotated_hvps", "hessian_rows", "partition_row", "block_contributions",
    "one_one_norm_estimate", "one_one_norm_exact", "cauchy_scale_estimate", "cauchy_vector",
    "one_one_norm_cauchy", "update_orthogonality", "update_orthogonality_tensor",
    "ViewState", "view_states", "adam_direction", "adam_update_views", "BLOCKS",
    "mean_interval", "nested_interval", "evidence", "difference_interval", "rows_needed",
    "t_quantile", "adam_moment_stats",
]
