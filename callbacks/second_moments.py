"""Histograms of Adam's second moment ``v`` in the rotated coordinates the optimizer runs in
(paper Fig. 6; docs/CONVENTIONS.md §6): ``log10 v`` over all entries and per parameter type, to
TensorBoard as raw histograms every ``every_n_steps`` optimizer steps and at the end of
training, computed on the device over a fixed range whose edge bins are under/overflow bins
(``v = 0`` lands in the first; NaNs are counted in ``second_moment/nan``). Rank zero only; a
summary PNG at the end. Under ``global`` scope the per-type split is positional.
"""
from __future__ import annotations

import math

import torch

from rotations.probes import view_states

from ._common import (PeriodicCallback, is_global_zero, optimizers, output_dir, tb_writers,
                      views_for)


class SecondMomentHistogram(PeriodicCallback):
    """Log ``log10`` of Adam's ``exp_avg_sq`` as raw TensorBoard histograms.

    Args:
        every_n_steps: period in optimizer steps (``trainer.global_step``).
        bins: number of equal-width bins on the log10 axis.
        log10_range: ``(lo, hi)`` of the bins; the edge bins absorb everything outside.
        per_type: also log one histogram per parameter type.
        moment: which optimizer-state tensor to read (``exp_avg_sq`` = Adam's v).
        tag: TensorBoard tag prefix.
        png: write a summary PNG at the end of training.
    """

    def __init__(self, every_n_steps: int = 500, bins: int = 120,
                 log10_range: tuple[float, float] = (-24.0, 0.0), per_type: bool = True,
                 moment: str = "exp_avg_sq", tag: str = "second_moment", png: bool = True):
        super().__init__(every_n_steps, at_end=True)
        if bins < 1:
            raise ValueError(f"bins must be positive, got {bins}")
        lo, hi = float(log10_range[0]), float(log10_range[1])
        if not hi > lo:
            raise ValueError(f"log10_range must be increasing, got {log10_range}")
        self.bins, self.lo, self.hi = bins, lo, hi
        self.per_type, self.moment, self.tag, self.png = per_type, moment, tag, png
        self.history: list[tuple[int, dict]] = []   # (step, {name: counts list}) on the host
        self._views_cache: dict = {}

    @property
    def bucket_limits(self) -> list[float]:
        w = (self.hi - self.lo) / self.bins
        return [self.lo + (k + 1) * w for k in range(self.bins)]

    # -- computation ------------------------------------------------------------------------
    def compute(self, optimizer, views=None) -> dict:
        """``{name: {"counts": [bins], "num", "min", "max", "sum", "sum_squares", "nan"}}`` for
        ``all`` and (``per_type``) every parameter type; ``{}`` without second moments."""
        acc: dict[str, list] = {}
        for vs in view_states(optimizer, views):
            v = vs.get(self.moment)
            if v is None:
                continue
            x = v.detach().reshape(-1).float()
            lx = torch.log10(x).clamp_(self.lo, self.hi)     # -inf (v = 0) -> lo
            nan = torch.isnan(lx)
            counts = torch.histc(lx, bins=self.bins, min=self.lo, max=self.hi)
            good = torch.where(nan, torch.zeros_like(lx), lx)
            stats = torch.stack([
                counts.sum(),
                torch.where(nan, torch.full_like(lx, math.inf), lx).min(),
                torch.where(nan, torch.full_like(lx, -math.inf), lx).max(),
                good.sum(dtype=torch.float64).float(), (good * good).sum(dtype=torch.float64).float(),
                nan.sum().float()])
            keys = ["all"] + ([vs.view.ptype] if self.per_type else [])
            for k in keys:
                if k not in acc:
                    acc[k] = [counts.clone(), stats.clone()]
                else:
                    c, s = acc[k]
                    c += counts
                    s[0] += stats[0]
                    s[1] = torch.minimum(s[1], stats[1])
                    s[2] = torch.maximum(s[2], stats[2])
                    s[3:] += stats[3:]
        if not acc:
            return {}
        names = list(acc)
        host = torch.stack([torch.cat([acc[n][0], acc[n][1]]) for n in names]).cpu().tolist()
        out = {}
        for n, row in zip(names, host):
            counts, (num, mn, mx, sm, sq, nn) = row[: self.bins], row[self.bins:]
            out[n] = {"counts": counts, "num": num, "min": mn, "max": mx, "sum": sm,
                      "sum_squares": sq, "nan": nn}
        return out

    def _views(self, opt, pl_module):
        key = id(opt)
        if key not in self._views_cache:
            self._views_cache = {key: views_for(opt, pl_module)}
        return self._views_cache[key]

    def log_now(self, trainer, pl_module, step: int) -> dict:
        result: dict = {}
        for opt in optimizers(trainer):
            result = self.compute(opt, self._views(opt, pl_module))
            if result:
                break
        if not result:
            return {}
        limits = self.bucket_limits
        for w in tb_writers(trainer):
            for name, h in result.items():
                if h["num"] <= 0:
                    continue
                w.add_histogram_raw(f"{self.tag}/log10_v/{name}", min=h["min"], max=h["max"],
                                    num=h["num"], sum=h["sum"], sum_squares=h["sum_squares"],
                                    bucket_limits=limits, bucket_counts=h["counts"],
                                    global_step=step)
            if result["all"]["nan"]:
                w.add_scalar(f"{self.tag}/nan", result["all"]["nan"], global_step=step)
        self.history.append((step, {n: h["counts"] for n, h in result.items()}))
        return result

    def on_train_end(self, trainer, pl_module):
        super().on_train_end(trainer, pl_module)          # the last step, if not logged yet
        if not (self.png and self.history and is_global_zero(trainer)):
            return
        d = output_dir(trainer)
        if d is not None:
            try:
                self.save_png(d / "second_moments.png")
            except Exception as e:  # noqa: BLE001 - a figure must never kill training
                print(f"SecondMomentHistogram: could not write the PNG: {e}")

    def save_png(self, path) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        w = (self.hi - self.lo) / self.bins
        centers = [self.lo + (k + 0.5) * w for k in range(self.bins)]
        pick = self.history
        if len(pick) > 6:
            idx = sorted({round(j * (len(pick) - 1) / 5) for j in range(6)})
            pick = [pick[j] for j in idx]
        step_last, last = self.history[-1]
        types = [n for n in last if n != "all"]
        fig, axes = plt.subplots(1, 2 if types else 1, figsize=(12 if types else 6, 4),
                                 squeeze=False)
        ax = axes[0][0]
        for step, h in pick:
            c = h["all"]
            tot = sum(c) or 1.0
            ax.plot(centers, [x / tot for x in c], label=f"step {step}")
        ax.set_xlabel("log10 v (rotated coordinates)")
        ax.set_ylabel("fraction of entries")
        ax.set_title("Adam second moment, all parameters")
        ax.legend(fontsize=7)
        if types:
            ax = axes[0][1]
            for n in types:
                c = last[n]
                tot = sum(c) or 1.0
                ax.plot(centers, [x / tot for x in c], label=n)
            ax.set_xlabel("log10 v")
            ax.set_title(f"per parameter type, step {step_last}")
            ax.legend(fontsize=7)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
