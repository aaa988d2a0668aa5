"""Histograms of Adam's second moment ``v`` in the rotated coordinates (paper Fig. 6).

:class:`SecondMomentHistogram` logs, every ``every_n_steps`` optimizer steps (and at the end
of training), the distribution of ``log10 v`` (``exp_avg_sq``) over all entries — globally
(``second_moment/log10_v/all``) and per parameter type (``second_moment/log10_v/<ptype>``)
— to TensorBoard with ``SummaryWriter.add_histogram_raw``.

* ``v`` is read where the optimizer keeps it: a :class:`~rotations.optimizer.RotatedOptimizer`'s
  state lives in rotated coordinates (one tensor per view, keyed by its shadow); a plain torch
  optimizer's state is per parameter and is cut into views with ``view.matrix``. A view's
  type is the parameter type of its slot (under ``global`` scope the slot of a view holds
  mixed coordinates: the per-type split is then positional).
* The histogram is computed on the device with ``torch.histc`` over the fixed range
  ``log10_range`` with ``bins`` equal bins. **The edge bins are under/overflow bins**: values
  are clamped into the range first, so ``v = 0`` (log10 = −inf) and anything below the range
  land in the first bin, anything above in the last, and the counts sum to the number of
  entries (NaN entries, if any, are left out and counted in ``second_moment/nan``). Only the
  bin counts and five summary numbers cross to the host.
* Rank zero only (``trainer.is_global_zero``): other ranks do nothing (every rank holds the
  same state under DDP).
* At the end of training a PNG (``second_moments.png`` in the log directory; matplotlib
  Agg) shows the global distribution at up to six logged steps and the per-type
  distribution at the last one.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from lightning.pytorch.callbacks import Callback

from rotations.probes import view_states

from ._common import is_global_zero, module_views, optimizers, output_dir, tb_writers


class SecondMomentHistogram(Callback):
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
        if every_n_steps < 1 or bins < 1:
            raise ValueError("every_n_steps and bins must be positive")
        lo, hi = float(log10_range[0]), float(log10_range[1])
        if not hi > lo:
            raise ValueError(f"log10_range must be increasing, got {log10_range}")
        self.every_n_steps, self.bins, self.lo, self.hi = every_n_steps, bins, lo, hi
        self.per_type, self.moment, self.tag, self.png = per_type, moment, tag, png
        self.history: list[tuple[int, dict]] = []   # (step, {name: counts list}) on the host
        self._last_step: Optional[int] = None
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

    def _views(self, trainer, pl_module, opt):
        if getattr(opt, "plan", None) is not None:
            return None
        key = id(opt)
        if key not in self._views_cache:
            self._views_cache = {key: module_views(pl_module)}
        return self._views_cache[key]

    def log_now(self, trainer, pl_module, step: int) -> dict:
        result: dict = {}
        for opt in optimizers(trainer):
            result = self.compute(opt, self._views(trainer, pl_module, opt))
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

    # -- hooks -------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not is_global_zero(trainer):
            return
        step = int(trainer.global_step)
        if step <= 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        self.log_now(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module):
        if not is_global_zero(trainer):
            return
        step = int(trainer.global_step)
        if step > 0 and step != self._last_step:
            self._last_step = step
            self.log_now(trainer, pl_module, step)
        if self.png and self.history:
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
