"""Loss-curve figures: one line per label (seed mean) with its 95 % band over seeds."""
from __future__ import annotations

import os
from typing import Any, Sequence

from .labels import LabelGroup
from .stats import StatsError, seed_average
from .tables import TRAIN_LOSS, VAL_ACC1, VAL_LOSS


def plot_group(cells: Sequence[LabelGroup], out_path: str | os.PathLike, *, title: str = "",
               smooth: int = 1, train_smooth: int = 1, colors: dict[str, Any] | None = None,
               targets: Sequence[float] = ()) -> None:
    """Fig.-1-style panels (train loss, val loss, [val acc1]) vs step; the shaded band is the
    pointwise 95 % t interval of the seed mean (no band for one seed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(TRAIN_LOSS, "train loss", train_smooth), (VAL_LOSS, "validation loss", smooth)]
    if any(r.curve(VAL_ACC1) is not None for c in cells for r in c.runs):
        panels.append((VAL_ACC1, "top-1 accuracy", smooth))
    fig = Figure(figsize=(5.0 * len(panels), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (tag, name, k) in zip(axes, panels):
        for i, c in enumerate(cells):
            curves = [x for x in (r.curve(tag) for r in c.runs) if x is not None]
            if not curves:
                continue
            try:
                s, m, lo, hi = seed_average(curves, k)
            except StatsError:
                continue
            color = (colors or {}).get(c.label, f"C{i % 10}")
            n = len(curves)
            ax.plot(s, m, color=color, lw=1.5, label=f"{c.label} ({n} seed{'s' * (n > 1)})")
            if n > 1:
                ax.fill_between(s, lo, hi, color=color, alpha=0.2, lw=0)
        if tag == VAL_LOSS:
            for t in targets:
                ax.axhline(t, color="0.4", ls=":", lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.set_title(name + (f" (smoothed, K={k})" if k > 1 else ""))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        axes[-1].legend(handles, labels, fontsize="small", loc="best",
                        title="band: 95% CI of the seed mean", title_fontsize="small")
    if title:
        fig.suptitle(title)
    fig.savefig(str(out_path), dpi=120)
