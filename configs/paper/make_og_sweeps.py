"""Writes the Orvieto & Gower sweep files of the catalogue (paper scale and CPU twins), and the
CPU twins' second stage: 3 seeds at each optimizer's best learning rate.

Their schedule decays to an *absolute* 1e-5 while adamrot's schedule takes a ratio
(``min_lr_ratio``), so every run sets ``min_lr_ratio = 1e-5 / lr``: the runs are listed
explicitly (a sweep ``grid`` cannot tie two keys). Re-generate after editing the grids:

    .venv/bin/python configs/paper/make_og_sweeps.py

CPU twins: stage 1 runs every lr of a half-decade grid with seed 0; then

    .venv/bin/python configs/paper/make_og_sweeps.py --seeds-at-best og_optimizers

reads ``runs/paper/cpu/og_optimizers`` (final val/loss, the report's functions), and writes
``runs/paper/cpu/og_optimizers_seeds.sweep.yaml``: seeds 1 and 2 at every optimizer's best lr.
An optimum at the edge of its grid is refused (exit 2) with the lr to add to ``CPU_LRS``.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FLOOR = 1e-5
CPU_RUNS = "runs/paper/cpu"
SEEDS_AT_BEST = [1, 2]          # seed 0 is the grid's run

# name -> (optimizer class_path, init_args without lr, trainer.gradient_clip_val)
OPTIMIZERS = {
    "adam": ("torch.optim.AdamW", {"betas": [0.95, 0.95], "eps": 1e-8, "weight_decay": 0.1}, 1.0),
    "signum": ("rotations.zoo.Signum", {"momentum": 0.95, "weight_decay": 0.1}, 1.0),
    # RMSprop as Adam with beta1 = 0 (bias-corrected, decoupled wd)
    "rmsprop": ("torch.optim.AdamW", {"betas": [0.0, 0.95], "eps": 1e-8, "weight_decay": 0.1}, 1.0),
    "signsgd": ("rotations.zoo.SignSGD", {"weight_decay": 0.1}, 1.0),
    # SGD with heavy-ball momentum, no clipping at all (the trainer's clip is switched off)
    "sgd": ("torch.optim.SGD", {"momentum": 0.9, "weight_decay": 0.0}, None),
    # SGD on a globally clipped gradient (clipping inside the optimizer)
    "sgd_clip": ("rotations.zoo.ClippedSGD", {"momentum": 0.9, "clip": 1.0, "mode": "global",
                                              "weight_decay": 0.0}, None),
}

PAPER_LRS = {
    "adam": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2],
    "signum": [1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3],
    "rmsprop": [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3],
    "signsgd": [2.5e-5, 5e-5, 1e-4, 2e-4, 4e-4],
    "sgd": [0.125, 0.25, 0.5, 1.0, 2.0],
    "sgd_clip": [0.125, 0.25, 0.5, 1.0, 2.0],
}

def half_decades(lo_exp2: int, n: int = 5) -> list[float]:
    """``n`` log-spaced lrs from ``10 ** (lo_exp2 / 2)`` in half-decade steps (x 3.16)."""
    return [float(f"{10 ** ((lo_exp2 + i) / 2):.3g}") for i in range(n)]


# CPU twins: 5 half-decade points per optimizer, centred on the best of the earlier 2-point grid
CPU_LRS = {
    "adam": half_decades(-7),       # 3.16e-4 ... 3.16e-2
    "signum": half_decades(-8),     # 1e-4 ... 1e-2
    "rmsprop": half_decades(-8),    # 1e-4 ... 1e-2
    "signsgd": half_decades(-9, 6), # 3.16e-5 ... 1e-2 (1e-2 added: 3.16e-3 was the edge optimum)
    "sgd": half_decades(-4),        # 0.01 ... 1
    "sgd_clip": half_decades(-3, 6),  # 0.0316 ... 10 (0.0316 added: 0.1 was the edge optimum)
}
# Adam with beta1 = beta2 = 0.95 against AdamW (0.9, 0.95), each tuned on its own grid
CPU_ONE_BETA = {
    "onebeta_b=0.95": ("rotations.zoo.AdamOneBeta", {"beta": 0.95, "eps": 1e-8, "weight_decay": 0.1},
                       1.0),
    "adamw_b1=0.9_b2=0.95": ("torch.optim.AdamW", {"betas": [0.9, 0.95], "eps": 1e-8,
                                                   "weight_decay": 0.1}, 1.0),
}
CPU_ONE_BETA_LRS = {k: half_decades(-7) for k in CPU_ONE_BETA}


def run(name: str, cls: str, args: dict, lr: float, clip, seed=None, extra=None) -> dict:
    r = {"name": name,
         "model.init_args.optimizer": {"class_path": cls, "init_args": {"lr": lr, **copy.deepcopy(args)}},
         "model.init_args.min_lr_ratio": float(f"{FLOOR / lr:.6g}"),
         "trainer.gradient_clip_val": clip}
    if seed is not None:
        r["seed_everything"] = seed
    r.update(extra or {})
    return r


def comparison(lrs: dict, seeds: list, optimizers: dict = OPTIMIZERS) -> list[dict]:
    out = []
    for opt, (cls, args, clip) in optimizers.items():
        for lr in lrs[opt]:
            for s in seeds:
                tag = f"{opt}_lr={lr:g}" + (f"_seed={s}" if s is not None else "")
                out.append(run(tag, cls, args, lr, clip, s))
    return out


def one_beta(lrs: list, betas: list, adam_betas: list, every: int) -> list[dict]:
    out = []
    for lr in lrs:
        for b in betas:
            out.append(run(f"onebeta_b={b:g}_lr={lr:g}", "rotations.zoo.AdamOneBeta",
                           {"beta": b, "eps": 1e-8, "weight_decay": 0.1}, lr, 1.0))
        for b1, b2 in adam_betas:
            out.append(run(f"adamw_b1={b1:g}_b2={b2:g}_lr={lr:g}", "torch.optim.AdamW",
                           {"betas": [b1, b2], "eps": 1e-8, "weight_decay": 0.1}, lr, 1.0))
    return out


def dump(path: Path, header: str, spec: dict) -> None:
    text = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=110)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header.strip() + "\n" + text)
    print("wrote", path.relative_to(ROOT) if ROOT in path.parents else path,
          len(spec.get("runs", [])), "runs")


# the CPU sweeps with a seeds-at-best stage: name -> (optimizers, lr grids, fixed overrides)
def _moment_stats(n):
    return {"trainer.callbacks": [{"class_path": "callbacks.AdamMomentStats",
                                   "init_args": {"every_n_steps": n}}]}


CPU_STAGED = {"og_optimizers": (OPTIMIZERS, CPU_LRS, {}),
              "og_one_beta": (CPU_ONE_BETA, CPU_ONE_BETA_LRS, _moment_stats(100))}


def best_lrs(name: str, runs_dir: Path, metric: str = "val/loss") -> dict[str, float]:
    """Best lr per optimizer tag of the CPU sweep ``name`` from its seed-0 runs; raises
    SystemExit(2) naming the lr to add when a best lr sits at the edge of its grid."""
    from adamrot.report import final_value, load_runs, mean_ci, next_grid_point

    optimizers, lrs, _ = CPU_STAGED[name]
    finals: dict[tuple[str, float], list[float]] = {}
    for r in load_runs([runs_dir]):
        tag, _, rest = r.name.rpartition("_lr=")
        v = final_value(r, metric)
        if tag in optimizers and v is not None:
            finals.setdefault((tag, float(rest.split("_seed=")[0])), []).append(v)
    best, problems = {}, []
    for tag in optimizers:
        grid = [lr for lr in lrs[tag] if (tag, lr) in finals]
        if len(grid) < len(lrs[tag]):
            problems.append(f"{tag}: runs missing for lr {sorted(set(lrs[tag]) - set(grid))}")
            continue
        score = {lr: mean_ci(finals[(tag, lr)]).value for lr in grid}
        lr = min(grid, key=lambda x: math.inf if math.isnan(score[x]) else score[x])
        if lr in (grid[0], grid[-1]):
            add = next_grid_point(grid, above=lr == grid[-1])
            problems.append(f"{tag}: best lr {lr:g} is at the edge of {grid}; add {add:g} to "
                            f"CPU_LRS in configs/paper/make_og_sweeps.py and re-run")
        best[tag] = lr
    if problems:
        print("make_og_sweeps: error: " + "; ".join(problems), file=sys.stderr)
        raise SystemExit(2)
    return best


def seeds_at_best(name: str, runs_root: Path) -> Path:
    optimizers, _, fixed = CPU_STAGED[name]
    best = best_lrs(name, runs_root / name)
    out = runs_root / f"{name}_seeds.sweep.yaml"
    spec = {"name": f"{name}_seeds_cpu", "out_dir": f"{CPU_RUNS}/{name}_seeds",
            "configs": ["configs/paper/cpu/llama_tiny.yaml"],
            **({"fixed": fixed} if fixed else {}),
            "runs": comparison({k: [v] for k, v in best.items()}, SEEDS_AT_BEST, optimizers)}
    dump(out, f"# GENERATED by configs/paper/make_og_sweeps.py --seeds-at-best {name} from the "
              f"seed-0 grid in {CPU_RUNS}/{name}:\n# seeds {SEEDS_AT_BEST} at every optimizer's best "
              f"lr ({', '.join(f'{k} {v:g}' for k, v in best.items())}).\n", spec)
    return out


def main():
    gen = "# GENERATED by configs/paper/make_og_sweeps.py -- edit the script, not this file.\n"
    dump(HERE / "og_optimizers.sweep.yaml", gen + """
# Orvieto & Gower, 160M Llama-style model (configs/paper/og_llama160m.yaml): Adam
# (beta1 = beta2 = 0.95), Signum, RMSprop (Adam with beta1 = 0), signSGD, SGD-M without any
# clipping and SGD-M on a globally clipped gradient (rotations.zoo.ClippedSGD), each over a
# learning-rate grid, 3 seeds; cosine to 1e-5 (min_lr_ratio = 1e-5 / lr). 90 runs.
#   adamrot sweep configs/paper/og_optimizers.sweep.yaml
#   adamrot report runs/paper/og_optimizers --out runs/paper/og_optimizers/report --label-keys optimizer,lr,betas
""", {"name": "og_optimizers", "out_dir": "runs/paper/og_optimizers",
      "configs": ["configs/paper/og_llama160m.yaml"],
      "fixed": {"trainer.enable_progress_bar": False},
      "runs": comparison(PAPER_LRS, [0, 1, 2])})
    dump(HERE / "cpu" / "og_optimizers.sweep.yaml", gen + """
# CPU twin of configs/paper/og_optimizers.sweep.yaml on configs/paper/cpu/llama_tiny.yaml (300 steps):
# the same six optimizers, each on a 5-point half-decade lr grid, seed 0 (30 runs); then
# 3 seeds at each best lr (make_og_sweeps.py --seeds-at-best og_optimizers; run_cpu_twins.sh).
#   adamrot sweep configs/paper/cpu/og_optimizers.sweep.yaml
""", {"name": "og_optimizers_cpu", "out_dir": f"{CPU_RUNS}/og_optimizers",
      "configs": ["configs/paper/cpu/llama_tiny.yaml"],
      "runs": comparison(CPU_LRS, [0])})
    dump(HERE / "og_one_beta.sweep.yaml", gen + """
# Orvieto & Gower: Adam with beta1 = beta2 = beta (rotations.zoo.AdamOneBeta) against AdamW
# with beta1 = 0.9 and several beta2, at two peak learning rates, on the 160M model;
# callbacks.AdamMomentStats logs sigma^2 = v - m^2 and m_hat / sqrt(v_hat) per type.
#   adamrot sweep configs/paper/og_one_beta.sweep.yaml
""", {"name": "og_one_beta", "out_dir": "runs/paper/og_one_beta",
      "configs": ["configs/paper/og_llama160m.yaml"],
      "fixed": {"trainer.enable_progress_bar": False, **_moment_stats(100)},
      "runs": one_beta([4e-3, 8e-3], [0.9, 0.95, 0.975, 0.99], [(0.9, 0.95), (0.9, 0.99), (0.9, 0.999)], 100)})
    dump(HERE / "cpu" / "og_one_beta.sweep.yaml", gen + """
# CPU twin of configs/paper/og_one_beta.sweep.yaml on configs/paper/cpu/llama_tiny.yaml:
# beta1 = beta2 = 0.95 (rotations.zoo.AdamOneBeta) against AdamW (0.9, 0.95), each on its own
# 5-point half-decade lr grid, seed 0 (10 runs); then 3 seeds at each best lr
# (make_og_sweeps.py --seeds-at-best og_one_beta; run_cpu_twins.sh).
#   adamrot sweep configs/paper/cpu/og_one_beta.sweep.yaml
""", {"name": "og_one_beta_cpu", "out_dir": f"{CPU_RUNS}/og_one_beta",
      "configs": ["configs/paper/cpu/llama_tiny.yaml"],
      "fixed": _moment_stats(100),
      "runs": comparison(CPU_ONE_BETA_LRS, [0], CPU_ONE_BETA)})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds-at-best", choices=sorted(CPU_STAGED), metavar="NAME",
                    help="write the seeds stage of a CPU sweep from its finished grid")
    ap.add_argument("--runs", default=str(ROOT / CPU_RUNS), help="where the CPU runs are")
    a = ap.parse_args()
    if a.seeds_at_best:
        seeds_at_best(a.seeds_at_best, Path(a.runs))
    else:
        main()
