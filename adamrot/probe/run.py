"""Running ``adamrot probe`` in resumable units of work: gradient batches, Hessian row passes
(with the running sum of the pass in progress) and Cauchy vectors, each saved atomically to
``OUT`` as it finishes; then the result ``OUT/probe.json`` (docs/CONVENTIONS.md §6)."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from callbacks.files import atomic_torch_save, atomic_write
from rotations.probes import (adam_update_views, cauchy_scale_estimate, cauchy_vector,
                              rotated_gradient, rotated_hvps)

from .loading import BatchStream, ProbeError, default_loss_fn, load_run, resolve_paths
from .rows import (HIST_BINS, HIST_HI, HIST_LO, pool_sizes, random_directions, row_pools,
                   row_summary, select_rows)
from .summary import (bound_summary, cauchy_summary, one_one_summary, summarize_rows,
                      table1_intervals, write_figures)

PARTIAL = "probe.partial.json"
HVP_ACC = "probe.hvp.pt"
CAUCHY = "probe.cauchy.pt"
RESULT = "probe.json"


def _csv(s: Optional[str]) -> Optional[list[str]]:
    if not s:
        return None
    return [x.strip() for x in s.split(",") if x.strip()]


def signature(args: argparse.Namespace, ckpt_path: Path) -> dict:
    """The settings a partial or final result was made with (resuming needs the same)."""
    st = ckpt_path.stat()
    try:
        layers = [int(x) for x in _csv(args.layers)] if args.layers else None
    except ValueError:
        raise ProbeError(f"--layers: expected comma-separated ints, got {args.layers!r}") from None
    return {"ckpt": str(ckpt_path.resolve()), "ckpt_size": st.st_size,
            "ckpt_mtime": int(st.st_mtime), "batches": args.batches,
            "hessian_rows": args.hessian_rows, "hessian_batches": args.hessian_batches,
            "row_types": _csv(args.row_types), "layers": layers,
            "cauchy_vectors": args.cauchy_vectors, "random_directions": args.random_directions,
            "rows_per_pass": args.rows_per_pass, "split": args.split, "seed": args.seed,
            "dtype": args.dtype}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ProbeError(f"{path}: unreadable ({e}); delete it or pass --overwrite") from None


class Probe:
    """One probe of one checkpoint into ``out``: ``partial`` holds the finished units."""

    def __init__(self, args: argparse.Namespace, run, out: Path, partial: dict):
        self.args, self.run, self.out, self.partial = args, run, out, partial
        self.device = next(run.model.parameters()).device
        self.dtype = torch.float64 if args.dtype == "float64" else torch.float32
        self.space, self.model = run.space, run.model
        self.loss_fn = default_loss_fn(run.model)
        self.stream = BatchStream(run.datamodule, args.split, self.device, args.seed)
        self.show = not args.no_progress
        self.computed = {"bound_batches": 0, "row_passes": 0, "cauchy_vectors": 0}
        partial.setdefault("bound", {"per_batch": [], "argmax": []})
        partial.setdefault("rows", {})

    def save(self) -> None:
        atomic_write(self.out / PARTIAL, json.dumps(self.partial, indent=1))

    def bar(self, **kw):
        return tqdm(disable=not self.show, **kw)

    # -- 1. gradient bound (Alg. 1) ------------------------------------------------------------
    def gradient_bound(self) -> None:
        pb, total = self.partial["bound"], self.args.batches
        done = len(pb["per_batch"])
        if total <= done:
            return
        with self.bar(total=total, initial=done, desc="gradient bound") as bar:
            for batch in self.stream.iterate(done, total - done):
                g = rotated_gradient(self.model, self.loss_fn, batch, self.space).abs()
                j = int(torch.argmax(g))
                pb["per_batch"].append(float(g[j]))
                pb["argmax"].append(j)
                self.computed["bound_batches"] += 1
                self.save()
                bar.update(1)

    # -- 2. Hessian rows -------------------------------------------------------------------------
    def directions(self, indices: list[int]):
        """Random unit directions (shared by all rows) and Adam's normalised update direction
        from the checkpoint's optimizer state, with the update's description."""
        a, space = self.args, self.space
        randoms = None
        if indices and a.random_directions > 0:
            randoms = random_directions(space.d, a.random_directions, a.seed).to(self.device,
                                                                                  self.dtype)
        update, info = None, {"available": False}
        opt = self.run.optimizer
        if opt is not None:
            mats, has = adam_update_views(opt, self.run.views, space)
            if any(has):
                u = space.flatten_views(mats).to(device=self.device, dtype=torch.float64)
                norm = float(u.norm())
                lr = float(opt.param_groups[0].get("lr", float("nan")))
                info = {"available": True, "norm": norm, "lr": lr, "step_norm": lr * norm,
                        "views_with_state": int(sum(has)), "views": len(has)}
                if norm > 0:
                    update = (u / norm).to(self.dtype)
        return randoms, update, info

    def row_pass(self, rows: list[int]) -> torch.Tensor:
        """``len(rows) x d`` Hessian rows averaged over the ``k`` batches, resuming a saved
        running sum; the sum is saved every ``--save-every`` batches and on Ctrl-C."""
        a, acc_path, job = self.args, self.out / HVP_ACC, f"rows:{rows}"
        init, start = None, 0
        if acc_path.exists():
            saved = torch.load(acc_path, map_location=self.device, weights_only=True)
            if saved.get("job") == job:
                init, start = saved["sum"].to(self.device), int(saved["batches_done"])
        remaining = a.hessian_batches - start
        if remaining <= 0:
            return init / start

        def onehot(j):
            e = torch.zeros(self.space.d, dtype=self.dtype, device=self.device)
            e[rows[j]] = 1.0
            return e

        inflight: dict = {}

        def on_batch(n, acc):
            inflight.update(n=n, acc=acc)
            if n % max(1, a.save_every) == 0 and n < a.hessian_batches:
                atomic_torch_save(acc_path, {"job": job, "batches_done": n, "sum": acc})
                inflight["saved"] = n

        batches = self.stream.iterate(start, remaining)
        if self.show:
            batches = tqdm(batches, total=remaining, desc=f"rows {rows}", leave=False)
        try:
            return rotated_hvps(self.model, self.loss_fn, batches, self.space, onehot,
                                n=len(rows), init=init, start_batch=start, on_batch=on_batch)
        except KeyboardInterrupt:
            n = inflight.get("n", 0)
            if 0 < n < a.hessian_batches and inflight.get("saved") != n:
                atomic_torch_save(acc_path, {"job": job, "batches_done": n,
                                             "sum": inflight["acc"]})
            raise

    def hessian_rows(self, types, layers) -> tuple[list[int], dict]:
        a, space = self.args, self.space
        indices = select_rows(space, a.hessian_rows, types, layers, a.seed)
        if self.partial.get("indices") not in (None, indices):
            raise ProbeError("row selection changed since the partial results were written")
        self.partial["indices"] = indices
        self.save()
        randoms, update, info = self.directions(indices)
        per = max(1, a.rows_per_pass)
        passes = [indices[i:i + per] for i in range(0, len(indices), per)]
        todo = [p for p in passes if any(str(i) not in self.partial["rows"] for i in p)]
        if not todo:
            return indices, info
        done = len(indices) - sum(len(p) for p in todo)
        with self.bar(total=len(indices), initial=done, desc="hessian rows") as bar:
            for p in todo:
                rows = self.row_pass(p)
                for j, i in enumerate(p):
                    self.partial["rows"][str(i)] = row_summary(space, i, rows[j], randoms,
                                                               update)
                self.computed["row_passes"] += 1
                self.save()
                (self.out / HVP_ACC).unlink(missing_ok=True)
                bar.update(len(p))
        return indices, info

    # -- 3. Cauchy cross-check -------------------------------------------------------------------
    def cauchy(self, indices: list[int]) -> Optional[dict]:
        a, M = self.args, self.args.cauchy_vectors
        if M < 2 or a.hessian_batches < 1:
            return None
        cpath = self.out / CAUCHY
        cst = {"done": [], "logsum": None}
        if cpath.exists():
            cst = torch.load(cpath, map_location=self.device, weights_only=True)
        with self.bar(total=M, initial=len(cst["done"]), desc="cauchy vectors") as bar:
            for j in range(M):
                if j in cst["done"]:
                    continue
                z = cauchy_vector(self.space.d, a.seed, j).to(self.device, self.dtype)
                batches = self.stream.iterate(0, a.hessian_batches)
                hz = rotated_hvps(self.model, self.loss_fn, batches, self.space,
                                  z.unsqueeze(0))[0]
                la = hz.abs().to(torch.float64).log()
                cst["logsum"] = la if cst["logsum"] is None else cst["logsum"] + la
                cst["done"] = list(cst["done"]) + [j]
                atomic_torch_save(cpath, cst)
                self.computed["cauchy_vectors"] += 1
                bar.update(1)
        gam = cauchy_scale_estimate(cst["logsum"], M)
        return cauchy_summary(gam, indices, self.partial["rows"], M, a.hessian_batches)


def _previous(out: Path, sig: dict, overwrite: bool) -> tuple[Optional[dict], dict, bool]:
    """``(complete result or None, partial results to resume, stale files to discard)``."""
    result_path, partial_path = out / RESULT, out / PARTIAL
    if result_path.exists() and not overwrite:
        prev = _read_json(result_path)
        if prev.get("signature") == sig:
            return prev, {}, False
    if not partial_path.exists():
        return None, {}, False
    partial = _read_json(partial_path)
    if partial.get("signature") == sig:
        return None, partial, False
    if not overwrite:
        raise ProbeError(f"{partial_path} was made with other settings; rerun with the same "
                         "arguments to resume or pass --overwrite")
    return None, {}, True


def run_probe(args: argparse.Namespace) -> dict:
    """Probe the checkpoint ``args`` names; returns (and writes) the result dict. Bad input
    raises :class:`ProbeError` before anything is written."""
    if args.hessian_batches < 1 and (args.hessian_rows > 0 or args.cauchy_vectors > 0):
        raise ProbeError("--hessian-batches must be >= 1 (or pass --hessian-rows 0 "
                         "--cauchy-vectors 0)")
    run_dir, ckpt_path, cfg_path = resolve_paths(args.target, args.ckpt, args.config)
    out = Path(args.out) if args.out else run_dir / "probe"
    sig = signature(args, ckpt_path)
    prev, partial, discard = _previous(out, sig, args.overwrite)
    if prev is not None:
        print(f"probe: {out / RESULT} is complete for these settings (use --overwrite)")
        return prev
    t0 = time.time()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    run = load_run(cfg_path, ckpt_path, device, dtype)
    resumed = bool(partial)
    partial.setdefault("signature", sig)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ProbeError(f"{out}: cannot create the output directory ({e.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ProbeError(f"{out}: output directory is not writable")
    if discard:
        for f in (HVP_ACC, CAUCHY):
            (out / f).unlink(missing_ok=True)

    probe = Probe(args, run, out, partial)
    probe.gradient_bound()
    indices, update_info = probe.hessian_rows(sig["row_types"], sig["layers"])
    cauchy = probe.cauchy(indices)

    rows = [partial["rows"][str(i)] for i in indices]
    sizes = pool_sizes(row_pools(run.space, sig["row_types"], sig["layers"])) if rows else None
    result = {
        "signature": sig,
        "run_dir": str(run_dir), "checkpoint": str(ckpt_path), "global_step": run.global_step,
        "model": type(run.module).__name__, "device": str(device), "dtype": args.dtype,
        "rotation": run.module.rotation.to_dict(),
        "d": run.space.d, "rotated": run.space.rotated,
        "gradient_bound": bound_summary(partial["bound"]["per_batch"],
                                        partial["bound"]["argmax"], run.space),
        "one_one_norm": one_one_summary(rows, sizes),
        "one_one_norm_cauchy": cauchy,
        "update_direction": update_info,
        "hessian": {"batches": args.hessian_batches, "indices": indices,
                    "random_directions": args.random_directions,
                    "summary": summarize_rows(rows) if rows else None,
                    "intervals": table1_intervals(rows) if rows else None,
                    "log10_hist": {"lo": HIST_LO, "hi": HIST_HI, "bins": HIST_BINS},
                    "rows": rows},
        "resumed": resumed, "computed_this_run": probe.computed,
        "seconds_this_run": time.time() - t0,
    }
    if not args.no_figures and rows:
        try:
            result["figures"] = write_figures(out, rows)
        except Exception as e:  # noqa: BLE001 - figures are optional
            result["figures_error"] = str(e)
    atomic_write(out / RESULT, json.dumps(result, indent=1))
    for f in (PARTIAL, HVP_ACC, CAUCHY):
        (out / f).unlink(missing_ok=True)
    return result
