"""Lightning callbacks: measurements in rotated spaces (docs/CONVENTIONS.md §5–6) and the
reliability of a run (docs/RUNS.md). Imported lazily, so that ``callbacks.files`` can be used
without loading Lightning; ``exits`` holds every exit status of the command. May import
``rotations`` only."""
import importlib

_LAZY = {
    "AdamMomentStats": ".adam_stats",
    "UpdateOrthogonality": ".orthogonality",
    "SecondMomentHistogram": ".second_moments",
    "SVDRefreshLogger": ".svd_events",
}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
