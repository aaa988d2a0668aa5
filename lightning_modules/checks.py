"""Argument checks shared by the models and their LightningModules (plain Python: the model
files stay free of Lightning)."""
from __future__ import annotations


def positive_int(name: str, value, *, minimum: int = 1, optional: bool = False):
    """Return ``value`` if it is an int (not a bool) ``>= minimum`` (or ``None`` when
    ``optional``); else raise ``ValueError`` naming ``name``."""
    if optional and value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {what}{' or None' if optional else ''}, "
                         f"got {value!r}")
    return value
