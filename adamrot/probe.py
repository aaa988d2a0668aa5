"""``adamrot probe``: rotation-dependent assumptions measured at a checkpoint (paper Sec. 4).

Usage::

    adamrot probe RUN_DIR_or_CKPT [--ckpt PATH] [--config PATH] [--out DIR]
                  [--batches T] [--hessian-rows N] [--hessian-batches k]
                  [--row-types query,value,...] [--layers 0,5] [--cauchy-vectors M]
                  [--random-directions n] [--rows-per-pass r] [--split train|val]
                  [--seed S] [--device cuda|cpu] [--dtype float32|float64]
                  [--save-every B] [--overwrite] [--no-figures] [--no-progress]

What it does
------------
1. Loads the run: the model and data from ``RUN_DIR/config.yaml`` (LightningCLI's resolved
   config; ``model.init_args.compile`` is turned off and ``attention`` forced to ``math``
   so double backward works; data loader workers are set to 0 so the batch stream is
   deterministic), the weights and the optimizer state from the checkpoint
   (``RUN_DIR/checkpoints/last.ckpt`` by default; ``torch.load(weights_only=True)``). The
   rotation is rebuilt exactly as in training: the LightningModule's own optimizer is built
   and the checkpoint's optimizer state loaded into it, so block rotations are regenerated
   from the seed (fingerprints checked) and SVD bases are the checkpoint's. A checkpoint
   without optimizer state works for the non-SVD scopes (rotation regenerated from the
   config; no update direction).
2. Batches: the first ``T`` (bound) / ``k`` (Hessian) batches of the data module's
   *training* stream from its start (``--split val``: the validation batches, cycled), the
   same batches for every row. The model is in ``eval()`` mode.
3. **Gradient bound** (Alg. 1): ``max_B ‖R g_B‖_∞`` over ``T`` batches.
4. **Hessian rows** ``r_i = (1/k) Σ_B R ∇²f_B Rᵀ e_i`` for ``N`` rotated coordinates sampled
   (seeded) from slots of the requested parameter types (``--row-types``; default every
   matrix type of the model) and blocks (``--layers``, Transformer block indices; views
   outside blocks — embeddings, final norm, LM head — are always eligible), round-robin over
   the types, uniform within a type. For each row: the partition I_N / I_L / I_¬L
   (:mod:`rotations.probes` documents what "same neuron" means per scope), the |value|
   distribution per block (log10 histogram, Fig. 7/9), its L1 norm, and the contributions
   ``r_i[I]·δ[I]`` (Table 1/2) for ``n`` random directions (iid Gaussian, normalised to
   ``‖δ‖₂ = 1``, shared by all rows) and for Adam's update direction
   ``u = m̂/(sqrt(v̂)+ε)`` from the checkpoint's optimizer state in rotated coordinates,
   normalised to ``‖u‖₂ = 1`` (``update_direction.step_norm = lr·‖u‖`` rescales it to the
   actual last step without weight decay).
5. **(1,1)-norm**: ``‖H‖_(1,1)/d`` as the mean L1 norm of the sampled rows, with its standard
   error over rows; cross-checked by the Cauchy estimator over all ``d`` rows with ``M``
   probe vectors (:func:`rotations.probes.one_one_norm_cauchy`), also evaluated on the
   sampled rows against their exact L1 norms.
6. Writes ``OUT/probe.json`` and figures ``OUT/hessian_blocks.png`` (|value| distribution
   per block and row type) and ``OUT/contributions.png``. ``OUT`` defaults to
   ``RUN_DIR/probe``.

Interrupt and resume: every finished gradient batch, row (pass) and Cauchy vector is saved to
``OUT/probe.partial.json`` (+ ``probe.cauchy.pt``), and the running sum of the pass in progress
to ``OUT/probe.hvp.pt`` every ``--save-every`` batches. Re-running the same command skips
the finished work (a different setting is refused unless ``--overwrite``). Ctrl-C saves and
exits with status 130.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

PARTIAL = "probe.partial.json"
HVP_ACC = "probe.hvp.pt"
CAUCHY = "probe.cauchy.pt"
RESULT = "probe.json"
HIST_LO, HIST_HI, HIST_BINS = -20.0, 4.0, 96

#: called with a short label after every unit of work is saved (tests simulate Ctrl-C here)
_unit_done_hook: Optional[Callable[[str], None]] = None


class ProbeError(Exception):
    pass


# ------------------------------------------------------------------------------------------
# arguments and paths
# ------------------------------------------------------------------------------------------
def _csv(s: Optional[str]) -> Optional[list[str]]:
    if s is None or s == "":
        return None
    return [x.strip() for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adamrot probe", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="run directory (with config.yaml) or a checkpoint file")
    p.add_argument("--ckpt", help="checkpoint (default RUN_DIR/checkpoints/last.ckpt)")
    p.add_argument("--config", help="config.yaml (default RUN_DIR/config.yaml)")
    p.add_argument("--out", help="output directory (default RUN_DIR/probe)")
    p.add_argument("--batches", type=int, default=1000,
                   help="T minibatches for the gradient bound (paper: 1000; 0 skips)")
    p.add_argument("--hessian-rows", type=int, default=10, help="N sampled rows (0 skips)")
    p.add_argument("--hessian-batches", type=int, default=100,
                   help="k minibatches averaged per row (paper: 5000)")
    p.add_argument("--row-types", help="comma list of parameter types to sample rows from")
    p.add_argument("--layers", help="comma list of Transformer block indices")
    p.add_argument("--cauchy-vectors", type=int, default=8,
                   help="M Cauchy vectors for the (1,1)-norm cross-check (0 skips; >= 2)")
    p.add_argument("--random-directions", type=int, default=4,
                   help="random unit directions for the contributions")
    p.add_argument("--rows-per-pass", type=int, default=1,
                   help="rows sharing one gradient graph per batch (memory: r x d)")
    p.add_argument("--split", choices=("train", "val"), default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--save-every", type=int, default=20,
                   help="save the running HVP sum every B batches")
    p.add_argument("--overwrite", action="store_true",
                   help="discard partial or final results made with other settings")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def resolve_paths(target: str, ckpt: Optional[str], config: Optional[str]) -> tuple:
    t = Path(target)
    if t.is_file():
        ckpt_path = t
        run_dir = t.parent.parent if t.parent.name == "checkpoints" else t.parent
    elif t.is_dir():
        run_dir = t
        ckpt_path = Path(ckpt) if ckpt else t / "checkpoints" / "last.ckpt"
    else:
        raise ProbeError(f"{target}: no such run directory or checkpoint")
    if ckpt and t.is_file():
        ckpt_path = Path(ckpt)
    cfg_path = Path(config) if config else run_dir / "config.yaml"
    if not ckpt_path.is_file():
        raise ProbeError(f"checkpoint not found: {ckpt_path}")
    if not cfg_path.is_file():
        raise ProbeError(f"config not found: {cfg_path} (pass --config)")
    return run_dir, ckpt_path, cfg_path


# ------------------------------------------------------------------------------------------
# loading a run
# ------------------------------------------------------------------------------------------
def instantiate_from_config(conf: dict):
    """``(LightningModule, LightningDataModule or None)`` from a LightningCLI config dict."""
    import lightning as L
    from jsonargparse import ArgumentParser

    if "model" not in conf:
        raise ProbeError("config has no 'model' section")
    conf = copy.deepcopy(conf)
    margs = conf["model"].setdefault("init_args", {}) if isinstance(conf["model"], dict) else {}
    if "compile" in margs:
        margs["compile"] = False
    if "attention" in margs:
        margs["attention"] = "math"       # fused kernels have no double backward
    data = conf.get("data")
    if isinstance(data, dict) and "num_workers" in data.get("init_args", {}):
        data["init_args"]["num_workers"] = 0
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model", fail_untyped=False, required=True)
    parser.add_subclass_arguments(L.LightningDataModule, "data", fail_untyped=False,
                                  required=False)
    sub = {"model": conf["model"]}
    if data:
        sub["data"] = data
    cfg = parser.parse_object(sub)
    inst = getattr(parser, "instantiate", None) or parser.instantiate_classes
    init = inst(cfg)
    return init.model, getattr(init, "data", None)


def default_loss_fn(model) -> Callable:
    """``model(x, y)[1]`` for models taking targets (GPT), else cross-entropy of ``model(x)``."""
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if len(params) >= 2:
        def loss(m, batch):
            return m(batch[0], batch[1])[1]
    else:
        import torch.nn.functional as F

        def loss(m, batch):
            return F.cross_entropy(m(batch[0]), batch[1])
    return loss


class Loaded:
    """A run loaded for probing."""

    def __init__(self, module, datamodule, model, optimizer, views, space, ckpt: dict,
                 has_opt_state: bool):
        self.module, self.datamodule, self.model = module, datamodule, model
        self.optimizer, self.views, self.space = optimizer, views, space
        self.global_step = int(ckpt.get("global_step", 0))
        self.has_opt_state = has_opt_state


def load_run(cfg_path: Path, ckpt_path: Path, device, dtype) -> Loaded:
    import yaml

    from rotations.probes import RotatedSpace
    from rotations.scopes import RotationPlan

    conf = yaml.safe_load(Path(cfg_path).read_text())
    module, dm = instantiate_from_config(conf)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    sd = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("forward_model.")}
    missing, unexpected = module.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("forward_model.")]
    if missing or unexpected:
        raise ProbeError(f"checkpoint does not match the config's model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    module.to(device=device, dtype=dtype)
    module.eval()
    model = getattr(module, "model", module)
    views_fn = getattr(module, "rotation_views", None)
    from rotations.layout import model_layout
    views = views_fn() if callable(views_fn) else model_layout(model)
    rotation = getattr(module, "rotation", None)
    opt_states = ckpt.get("optimizer_states") or []
    optimizer = None
    if opt_states and hasattr(module, "build_optimizer"):
        optimizer = module.build_optimizer()
        try:
            optimizer.load_state_dict(opt_states[0])
        except (ValueError, KeyError, RuntimeError) as e:
            raise ProbeError(f"could not load the checkpoint's optimizer state: {e}") from e
        space = RotatedSpace.from_optimizer(optimizer, views)
    else:
        if rotation is not None and rotation.active:
            plan = RotationPlan(views, rotation)
            if plan.svd_units:
                raise ProbeError("an SVD-rotated checkpoint without optimizer state: the bases "
                                 "cannot be reconstructed")
            space = RotatedSpace.from_plan(plan)
        else:
            space = RotatedSpace.identity(views)
    return Loaded(module, dm, model, optimizer, views, space, ckpt, optimizer is not None)


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


class BatchStream:
    """Deterministic minibatch stream of a data module: batch ``b`` is always the same.

    ``iterate(start, count)`` restarts the loader (restoring a stateful dataset's initial
    position) and skips ``start`` batches; finite loaders are cycled.
    """

    def __init__(self, datamodule=None, split: str = "train", device="cpu", seed: int = 0,
                 loader_factory: Optional[Callable[[], Any]] = None):
        self.dm, self.split, self.device, self.seed = datamodule, split, device, seed
        self._factory = loader_factory
        self._state0 = None
        if datamodule is not None and loader_factory is None:
            if hasattr(datamodule, "prepare_data"):
                datamodule.prepare_data()
            if hasattr(datamodule, "setup"):
                datamodule.setup("fit")

    def _loader(self):
        if self._factory is not None:
            return self._factory()
        if self.dm is None:
            raise ProbeError("the config has no data section")
        loader = (self.dm.train_dataloader() if self.split == "train"
                  else self.dm.val_dataloader())
        if isinstance(loader, (list, tuple)):
            loader = loader[0]
        ds = getattr(loader, "dataset", None)
        if ds is not None and hasattr(ds, "state_dict") and hasattr(ds, "load_state_dict"):
            if self._state0 is None:
                self._state0 = copy.deepcopy(ds.state_dict())
            else:
                ds.load_state_dict(copy.deepcopy(self._state0))
        return loader

    def iterate(self, start: int, count: int):
        torch.manual_seed(self.seed)
        it = iter(self._loader())
        i = produced = 0
        fresh = True
        while produced < count:
            try:
                b = next(it)
            except StopIteration:
                if fresh:
                    raise ProbeError("the data loader yields no batches")
                it, fresh = iter(self._loader()), True
                continue
            fresh = False
            if i >= start:
                yield _to_device(b, self.device)
                produced += 1
            i += 1


# ------------------------------------------------------------------------------------------
# row selection and per-row statistics
# ------------------------------------------------------------------------------------------
def select_rows(space, n: int, types: Optional[list[str]], layers: Optional[list[int]],
                seed: int) -> list[int]:
    """``n`` rotated indices: round-robin over ``types`` (default: every matrix type), uniform
    within a type over the slots of eligible views (``layers`` restricts block indices;
    views without a block are always eligible). Deterministic in ``seed``; no repeats."""
    if n <= 0:
        return []
    if types is None:
        types = []
        for v, s in zip(space.views, space.shapes):
            if min(s) > 1 and v.ptype not in types:
                types.append(v.ptype)
    known = {v.ptype for v in space.views}
    bad = [t for t in types if t not in known]
    if bad:
        raise ProbeError(f"--row-types: {bad} not in this model (has {sorted(known)})")
    lset = set(layers) if layers is not None else None

    def eligible(v):
        b = v.meta.get("block") if isinstance(v.meta, dict) else None
        return lset is None or b is None or b in lset

    pools = {}
    for t in types:
        ranges = space.indices_of(lambda v, t=t: v.ptype == t and eligible(v))
        if not ranges:
            raise ProbeError(f"no views of type {t!r} in blocks {layers}")
        pools[t] = ranges
    rng = random.Random(seed)
    chosen: list[int] = []
    seen: set[int] = set()
    sizes = {t: sum(b - a for a, b in r) for t, r in pools.items()}
    k = 0
    while len(chosen) < n:
        if k > 100 * n + 1000:
            break
        t = types[k % len(types)]
        k += 1
        if sum(1 for i in seen if any(a <= i < b for a, b in pools[t])) >= sizes[t]:
            continue
        u = rng.randrange(sizes[t])
        for a, b in pools[t]:
            if u < b - a:
                idx = a + u
                break
            u -= b - a
        if idx in seen:
            continue
        seen.add(idx)
        chosen.append(idx)
    return chosen


def _log_hist(vals: torch.Tensor) -> tuple[list, int]:
    a = vals.abs()
    nz = a[a > 0]
    zeros = int(a.numel() - nz.numel())
    if nz.numel() == 0:
        return [0.0] * HIST_BINS, zeros
    h = torch.histc(torch.log10(nz.float()).clamp(HIST_LO, HIST_HI), bins=HIST_BINS,
                    min=HIST_LO, max=HIST_HI)
    return h.cpu().tolist(), zeros


def row_summary(space, i: int, row: torch.Tensor, randoms: Optional[torch.Tensor],
                update: Optional[torch.Tensor]) -> dict:
    from rotations.probes import BLOCKS, block_contributions

    c = space.locate(i)
    masks = space.block_masks(i, row.device)
    blocks = {}
    for b in BLOCKS:
        vals = row[masks[b]]
        a = vals.abs().double()
        hist, zeros = _log_hist(vals)
        blocks[b] = {"size": int(vals.numel()), "l1": float(a.sum()),
                     "l2": float(a.pow(2).sum().sqrt()),
                     "mean_abs": float(a.mean()) if vals.numel() else 0.0,
                     "max_abs": float(a.max()) if vals.numel() else 0.0,
                     "log10_hist": hist, "zeros": zeros}
    contrib: dict[str, Any] = {}
    if randoms is not None and randoms.shape[0] > 0:
        per = [block_contributions(row, i, randoms[j], space) for j in range(randoms.shape[0])]
        contrib["random"] = {k: [p[k] for p in per] for k in (*BLOCKS, "total")}
    if update is not None:
        contrib["update"] = block_contributions(row, i, update, space)
    return {"index": int(i), "view": c.view, "ptype": c.ptype, "layer_id": c.layer_id,
            "block": c.block, "row": c.row, "col": c.col, "scope": c.scope,
            "l1": float(row.abs().double().sum()), "diag": float(row[i]),
            "blocks": blocks, "contributions": contrib}


def _mean(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else None


def summarize_rows(rows: list[dict]) -> dict:
    """Table-1-style means per row type and over all rows."""
    from rotations.probes import BLOCKS

    groups: dict[str, list] = {"all": rows}
    for r in rows:
        groups.setdefault(r["ptype"], []).append(r)
    out = {}
    for name, rs in groups.items():
        g: dict[str, Any] = {"rows": len(rs), "mean_l1": _mean([r["l1"] for r in rs])}
        for b in BLOCKS:
            e = {"mean_abs_value": _mean([r["blocks"][b]["mean_abs"] for r in rs]),
                 "l1_share": _mean([r["blocks"][b]["l1"] / r["l1"] if r["l1"] else None
                                    for r in rs])}
            rnd = [x for r in rs if "random" in r["contributions"]
                   for x in r["contributions"]["random"][b]]
            if rnd:
                e["random_mean"] = _mean(rnd)
                e["random_mean_abs"] = _mean([abs(x) for x in rnd])
            upd = [r["contributions"]["update"][b] for r in rs if "update" in r["contributions"]]
            if upd:
                e["update_mean"] = _mean(upd)
                e["update_mean_abs"] = _mean([abs(x) for x in upd])
            g[b] = e
        out[name] = g
    return out


# ------------------------------------------------------------------------------------------
# partial results
# ------------------------------------------------------------------------------------------
def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _atomic_torch(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _hook(label: str) -> None:
    if _unit_done_hook is not None:
        _unit_done_hook(label)


def random_directions(d: int, n: int, seed: int) -> torch.Tensor:
    """``n`` iid Gaussian directions of unit L2 norm (CPU float64, device independent)."""
    out = torch.empty(n, d, dtype=torch.float64)
    for j in range(n):
        g = torch.Generator().manual_seed(int(seed) * 7_919 + 104_729 * (j + 1))
        z = torch.randn(d, generator=g, dtype=torch.float64)
        out[j] = z / z.norm()
    return out


# ------------------------------------------------------------------------------------------
# the probe
# ------------------------------------------------------------------------------------------
def run_probe(args: argparse.Namespace) -> dict:
    from rotations.probes import (adam_update_views, cauchy_scale_estimate, cauchy_vector,
                                  rotated_gradient, rotated_hvps)

    run_dir, ckpt_path, cfg_path = resolve_paths(args.target, args.ckpt, args.config)
    out = Path(args.out) if args.out else run_dir / "probe"
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    if args.cauchy_vectors == 1 or args.cauchy_vectors < 0:
        raise ProbeError("--cauchy-vectors must be 0 or at least 2")
    for name in ("batches", "hessian_rows", "random_directions"):
        if getattr(args, name) < 0:
            raise ProbeError(f"--{name.replace('_', '-')} must be >= 0")
    if args.hessian_batches < 1 and (args.hessian_rows > 0 or args.cauchy_vectors > 0):
        raise ProbeError("--hessian-batches must be >= 1 (or pass --hessian-rows 0 "
                         "--cauchy-vectors 0)")
    st = ckpt_path.stat()
    types = _csv(args.row_types)
    layers = [int(x) for x in _csv(args.layers)] if args.layers else None
    signature = {"ckpt": str(ckpt_path.resolve()), "ckpt_size": st.st_size,
                 "ckpt_mtime": int(st.st_mtime), "batches": args.batches,
                 "hessian_rows": args.hessian_rows, "hessian_batches": args.hessian_batches,
                 "row_types": types, "layers": layers, "cauchy_vectors": args.cauchy_vectors,
                 "random_directions": args.random_directions,
                 "rows_per_pass": args.rows_per_pass, "split": args.split, "seed": args.seed,
                 "dtype": args.dtype}

    result_path = out / RESULT
    if result_path.exists() and not args.overwrite:
        prev = json.loads(result_path.read_text())
        if prev.get("signature") == signature:
            print(f"probe: {result_path} is complete for these settings (use --overwrite)")
            return prev
    partial_path = out / PARTIAL
    partial: dict = {}
    if partial_path.exists():
        partial = json.loads(partial_path.read_text())
        if partial.get("signature") != signature:
            if not args.overwrite:
                raise ProbeError(f"{partial_path} was made with other settings; rerun with the "
                                 "same arguments to resume or pass --overwrite")
            partial = {}
            for f in (HVP_ACC, CAUCHY):
                (out / f).unlink(missing_ok=True)
    resumed = bool(partial)
    partial.setdefault("signature", signature)
    partial.setdefault("bound", {"per_batch": [], "argmax": []})
    partial.setdefault("rows", {})
    computed = {"bound_batches": 0, "row_passes": 0, "cauchy_vectors": 0}

    t0 = time.time()
    run = load_run(cfg_path, ckpt_path, device, dtype)
    space, model = run.space, run.model
    loss_fn = default_loss_fn(model)
    stream = BatchStream(run.datamodule, args.split, device, args.seed)
    show = not args.no_progress
    from tqdm.auto import tqdm

    def save():
        _atomic_json(partial_path, partial)

    # -- 1. gradient bound ----------------------------------------------------------------------
    pb = partial["bound"]
    done = len(pb["per_batch"])
    if args.batches > done:
        bar = tqdm(total=args.batches, initial=done, desc="gradient bound", disable=not show)
        for b, batch in enumerate(stream.iterate(done, args.batches - done), start=done):
            g = rotated_gradient(model, loss_fn, batch, space).abs()
            j = int(torch.argmax(g))
            pb["per_batch"].append(float(g[j]))
            pb["argmax"].append(j)
            computed["bound_batches"] += 1
            save()
            bar.update(1)
            _hook(f"bound:{b}")
        bar.close()

    # -- 2. Hessian rows ------------------------------------------------------------------------
    indices = select_rows(space, args.hessian_rows, types, layers, args.seed)
    if partial.get("indices") not in (None, indices):
        raise ProbeError("row selection changed since the partial results were written")
    partial["indices"] = indices
    save()
    randoms = None
    if indices and args.random_directions > 0:
        randoms = random_directions(space.d, args.random_directions, args.seed).to(device, dtype)
    update, upd_info = None, {"available": False}
    if run.optimizer is not None:
        mats, has = adam_update_views(run.optimizer, run.views, space)
        if any(has):
            u = space.flatten_views(mats).to(device=device, dtype=torch.float64)
            norm = float(u.norm())
            lr = float(run.optimizer.param_groups[0].get("lr", float("nan")))
            upd_info = {"available": True, "norm": norm, "lr": lr, "step_norm": lr * norm,
                        "views_with_state": int(sum(has)), "views": len(has)}
            if norm > 0:
                update = (u / norm).to(dtype)
    passes = [indices[a:a + max(1, args.rows_per_pass)]
              for a in range(0, len(indices), max(1, args.rows_per_pass))]
    acc_path = out / HVP_ACC
    todo = [p for p in passes if any(str(i) not in partial["rows"] for i in p)]
    if todo:
        bar = tqdm(total=len(indices), initial=len(indices) - sum(len(p) for p in todo),
                   desc="hessian rows", disable=not show)
    for p in todo:
        init, start = None, 0
        if acc_path.exists():
            saved = torch.load(acc_path, map_location=device, weights_only=True)
            if saved.get("job") == f"rows:{p}":
                init, start = saved["sum"].to(device), int(saved["batches_done"])

        def onehot(j, p=p):
            e = torch.zeros(space.d, dtype=dtype, device=device)
            e[p[j]] = 1.0
            return e

        inflight: dict = {}

        def on_batch(n, acc, p=p):
            inflight.update(n=n, acc=acc)
            if n % max(1, args.save_every) == 0 and n < args.hessian_batches:
                _atomic_torch(acc_path, {"job": f"rows:{p}", "batches_done": n, "sum": acc})
                inflight["saved"] = n
                _hook(f"rows:{p}:batch{n}")

        remaining = args.hessian_batches - start
        if remaining > 0:
            batches = stream.iterate(start, remaining)
            if show:
                batches = tqdm(batches, total=remaining, desc=f"rows {p}", leave=False)
            try:
                rows = rotated_hvps(model, loss_fn, batches, space, onehot, n=len(p),
                                    init=init, start_batch=start, on_batch=on_batch)
            except KeyboardInterrupt:
                n = inflight.get("n", 0)
                if 0 < n < args.hessian_batches and inflight.get("saved") != n:
                    _atomic_torch(acc_path, {"job": f"rows:{p}", "batches_done": n,
                                             "sum": inflight["acc"]})
                raise
        else:
            rows = init / start
        for j, i in enumerate(p):
            partial["rows"][str(i)] = row_summary(space, i, rows[j], randoms, update)
        computed["row_passes"] += 1
        save()
        acc_path.unlink(missing_ok=True)
        if todo:
            bar.update(len(p))
        _hook(f"rows:{p}")
    if todo:
        bar.close()

    # -- 3. Cauchy cross-check -------------------------------------------------------------------
    cauchy_info = None
    M = args.cauchy_vectors
    if M >= 2 and args.hessian_batches > 0:
        cpath = out / CAUCHY
        cst = {"done": [], "logsum": None}
        if cpath.exists():
            cst = torch.load(cpath, map_location=device, weights_only=True)
        bar = tqdm(total=M, initial=len(cst["done"]), desc="cauchy vectors", disable=not show)
        for j in range(M):
            if j in cst["done"]:
                continue
            z = cauchy_vector(space.d, args.seed, j).to(device, dtype)
            batches = stream.iterate(0, args.hessian_batches)
            hz = rotated_hvps(model, loss_fn, batches, space, z.unsqueeze(0))[0]
            la = hz.abs().to(torch.float64).log()
            cst["logsum"] = la if cst["logsum"] is None else cst["logsum"] + la
            cst["done"] = list(cst["done"]) + [j]
            _atomic_torch(cpath, cst)
            computed["cauchy_vectors"] += 1
            bar.update(1)
            _hook(f"cauchy:{j}")
        bar.close()
        gam = cauchy_scale_estimate(cst["logsum"], M)
        sampled = [(float(gam[i]), partial["rows"][str(i)]["l1"]) for i in indices]
        cauchy_info = {
            "estimate": float(gam.mean()), "vectors": M, "batches": args.hessian_batches,
            "row_rel_sd": math.pi / (2 * math.sqrt(M)),
            "sampled_rows_cauchy_mean": _mean([a for a, _ in sampled]),
            "sampled_rows_exact_mean": _mean([b for _, b in sampled]),
            "sampled_rows_log_ratio_mean": _mean([math.log(a / b) for a, b in sampled
                                                  if a > 0 and b > 0]),
            "definition": "mean over all d rows of cos(pi/2M)^M exp(mean_j log|(H z_j)_i|), "
                          "z_j iid standard Cauchy: estimates ||H||_(1,1)/d"}

    # -- 4. assemble ---------------------------------------------------------------------------------
    rows = [partial["rows"][str(i)] for i in indices]
    l1s = [r["l1"] for r in rows]
    one_one = None
    if l1s:
        mean = sum(l1s) / len(l1s)
        se = (math.sqrt(sum((x - mean) ** 2 for x in l1s) / (len(l1s) - 1) / len(l1s))
              if len(l1s) > 1 else None)
        one_one = {"estimate": mean, "stderr": se, "rows": len(l1s),
                   "definition": "mean L1 norm of the sampled rows = estimate of "
                                 "||H||_(1,1)/d with ||H||_(1,1) = sum_mn |H_mn|"}
    bound = None
    if pb["per_batch"]:
        bmax = max(range(len(pb["per_batch"])), key=lambda k: pb["per_batch"][k])
        where = space.locate(pb["argmax"][bmax])
        bound = {"value": pb["per_batch"][bmax], "batches": len(pb["per_batch"]),
                 "argmax_batch": bmax, "argmax_index": pb["argmax"][bmax],
                 "argmax_view": where.view, "argmax_ptype": where.ptype,
                 "per_batch_mean": sum(pb["per_batch"]) / len(pb["per_batch"]),
                 "definition": "max over the T batches of ||R g_B||_inf (Alg. 1)"}
    result = {
        "signature": signature,
        "run_dir": str(run_dir), "checkpoint": str(ckpt_path), "global_step": run.global_step,
        "model": type(run.module).__name__, "device": str(device), "dtype": args.dtype,
        "rotation": (run.module.rotation.to_dict()
                     if hasattr(getattr(run.module, "rotation", None), "to_dict") else None),
        "d": space.d, "rotated": space.rotated,
        "gradient_bound": bound,
        "one_one_norm": one_one,
        "one_one_norm_cauchy": cauchy_info,
        "update_direction": upd_info,
        "hessian": {"batches": args.hessian_batches, "indices": indices,
                    "random_directions": args.random_directions,
                    "summary": summarize_rows(rows) if rows else None,
                    "log10_hist": {"lo": HIST_LO, "hi": HIST_HI, "bins": HIST_BINS},
                    "rows": rows},
        "resumed": resumed, "computed_this_run": computed,
        "seconds_this_run": time.time() - t0,
    }
    if not args.no_figures and rows:
        try:
            result["figures"] = write_figures(out, rows)
        except Exception as e:  # noqa: BLE001 - figures are optional
            result["figures_error"] = str(e)
    _atomic_json(result_path, result)
    for f in (PARTIAL, HVP_ACC, CAUCHY):
        (out / f).unlink(missing_ok=True)
    return result


def write_figures(out: Path, rows: list[dict]) -> list[str]:
    """Fig. 9 style: distribution of |H_ij| (log10) per block and row type; and the
    Table-1 contributions as bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rotations.probes import BLOCKS

    types = []
    for r in rows:
        if r["ptype"] not in types:
            types.append(r["ptype"])
    w = (HIST_HI - HIST_LO) / HIST_BINS
    centers = [HIST_LO + (k + 0.5) * w for k in range(HIST_BINS)]
    fig, axes = plt.subplots(1, len(types), figsize=(4 * len(types), 3.4), squeeze=False)
    colors = {"neuron": "tab:blue", "layer": "tab:orange", "other": "tab:green"}
    for ax, t in zip(axes[0], types):
        rs = [r for r in rows if r["ptype"] == t]
        for b in BLOCKS:
            tot = [0.0] * HIST_BINS
            for r in rs:
                for k, c in enumerate(r["blocks"][b]["log10_hist"]):
                    tot[k] += c
            s = sum(tot)
            if s > 0:
                ax.plot(centers, [c / s / w for c in tot], label=f"I_{b}", color=colors[b])
        ax.set_title(f"{t} ({len(rs)} rows)")
        ax.set_xlabel("log10 |H_ij|")
        ax.set_xlim(-14, 2)
    axes[0][0].set_ylabel("density")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    p1 = out / "hessian_blocks.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)

    s = summarize_rows(rows)["all"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = range(len(BLOCKS))
    for off, key, lab in ((-0.2, "random_mean", "random δ"), (0.2, "update_mean", "update δ")):
        vals = [s[b].get(key) for b in BLOCKS]
        if any(v is not None for v in vals):
            ax.bar([x + off for x in xs], [v or 0.0 for v in vals], width=0.4, label=lab)
    ax.set_xticks(list(xs), [f"I_{b}" for b in BLOCKS])
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("mean r_i[I]·δ[I]  (‖δ‖ = 1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p2 = out / "contributions.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [str(p1), str(p2)]


def print_summary(res: dict) -> None:
    gb = res.get("gradient_bound")
    oo = res.get("one_one_norm")
    ca = res.get("one_one_norm_cauchy")
    rot = res.get("rotation") or {}
    print(f"probe of {res['checkpoint']} (step {res['global_step']}, d = {res['d']}, "
          f"rotation {rot.get('scope')}{' only=' + str(rot['only']) if rot.get('only') else ''})")
    if gb:
        print(f"  gradient bound max_B ||R g_B||_inf = {gb['value']:.4g} over {gb['batches']} "
              f"batches (at {gb['argmax_view']})")
    if oo:
        se = f" ± {oo['stderr']:.2g}" if oo.get("stderr") is not None else ""
        print(f"  ||H||_(1,1)/d (mean row L1, {oo['rows']} rows) = {oo['estimate']:.4g}{se}")
    if ca:
        print(f"  Cauchy cross-check ({ca['vectors']} vectors, all rows) = {ca['estimate']:.4g}")
    summ = (res.get("hessian") or {}).get("summary") or {}
    if "all" in summ:
        a = summ["all"]
        for b in ("neuron", "layer", "other"):
            e = a[b]
            rnd, upd = e.get("random_mean"), e.get("update_mean")
            print(f"  I_{b:6s} mean|H_ij| = {e['mean_abs_value']:.3g}   r_i[I]·δ[I]: random "
                  f"{'n/a' if rnd is None else format(rnd, '+.3g')}, update "
                  f"{'n/a' if upd is None else format(upd, '+.3g')}")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        res = run_probe(args)
    except KeyboardInterrupt:
        print("\nprobe interrupted: partial results saved; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except ProbeError as e:
        print(f"adamrot probe: error: {e}", file=sys.stderr)
        return 2
    print_summary(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
