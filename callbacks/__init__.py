"""Lightning callbacks that measure training in rotated spaces (docs/CONVENTIONS.md §5–6)."""
from .adam_stats import AdamMomentStats
from .orthogonality import UpdateOrthogonality
from .second_moments import SecondMomentHistogram
from .svd_events import SVDRefreshLogger

__all__ = ["SecondMomentHistogram", "UpdateOrthogonality", "SVDRefreshLogger", "AdamMomentStats"]
