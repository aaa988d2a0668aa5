"""The rotation-penalty scaling series (our own experiment, not in the papers; issue #27 of
2026-12): how AdamW's penalty under ``global`` (against ``none``) changes with scale on a CPU,
along two axes of the tiny GPT twin (byte tokens, context 64, batch 16 = 1,024 tokens/step,
AdamW (0.9, 0.95), wd 0.1, warm-up then cosine to 10 %, as ``configs/paper/cpu/gpt2_tiny.yaml``):

* **width** at a fixed 5 tokens per parameter: widths 32 (2 layers), 64 and 128 (4 layers);
* **tokens per parameter** at width 32: 5, 20, 50 and 200 (the last ≈ 7.4 M tokens);

``global`` and ``none`` at every point, ``outputwise`` and ``svd`` too at width 32.

Parameters count everything (tied 320-token embedding, positions); the corpus is the embedded
one capped at 10 MB (≈ 9.8 M training tokens), so every run reads less than one epoch. Seeds
vary the initialisation, the rotation and the data order together (``rotation.seed: null``).

Each point is run in two stages, each an ``adamrot sweep`` file this script writes:

1. ``tune``: seed 0, every scope at lr ∈ {1e-3, 3e-3, 1e-2} (half-decades around the twin's
   3e-3; width 32 also 3e-2 and 1e-1); ``python configs/scaling/make_sweeps.py tune`` writes ``configs/scaling/tune/*.sweep.yaml``.
2. ``seeds``: seeds 1 and 2 at each scope's best tuned lr (final validation loss);
   ``python configs/scaling/make_sweeps.py seeds`` reads the finished tune runs and writes
   ``configs/scaling/seeds/*.sweep.yaml``; it refuses a point whose best lr is at an edge of
   the grid (extend ``LRS`` / ``LRS_SMALL`` and tune again).

``bash configs/scaling/run.sh`` runs both stages (resumable).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BASE = "configs/paper/cpu/gpt2_tiny.yaml"
VOCAB, CONTEXT, BATCH = 320, 64, 16
TOKENS_PER_STEP = CONTEXT * BATCH
LRS = [1.0e-3, 3.0e-3, 1.0e-2]
#: width 32 adds 3e-2 and 1e-1: its first tune runs (2026-12-08) put the best lr of several
#: scopes at 1e-2, then at 3e-2
LRS_SMALL = LRS + [3.0e-2, 1.0e-1]
#: scopes per point: global against none everywhere, output-wise and svd where cheap (width 32)
SCOPES_SMALL = ["none", "global", "outputwise", "svd"]
SCOPES_LARGE = ["none", "global"]
SEEDS = [1, 2]
#: (width, layers, heads, tokens per parameter): the width axis, then the tokens axis
POINTS = [(32, 2, 2, 5), (64, 4, 4, 5), (128, 4, 4, 5),
          (32, 2, 2, 20), (32, 2, 2, 50), (32, 2, 2, 200)]
MAX_BYTES = 10_000_000


def parameters(width: int, layers: int) -> int:
    """Parameters of the twin GPT (no biases, tied embedding, learned positions): embedding
    ``V·C`` + positions ``T·C`` + per block 12 C² + 2 C (two LayerNorm gains) + final gain."""
    return VOCAB * width + CONTEXT * width + layers * (12 * width * width + 2 * width) + width


def scopes(width: int) -> list[str]:
    return SCOPES_SMALL if width <= 32 else SCOPES_LARGE


def lrs(width: int) -> list[float]:
    return LRS_SMALL if width <= 32 else LRS


def point_name(width: int, layers: int, tpp: int) -> str:
    return f"w{width}_l{layers}_tpp{tpp}"


def fixed(width: int, layers: int, heads: int, tpp: int) -> dict:
    steps = round(tpp * parameters(width, layers) / TOKENS_PER_STEP)
    return {
        "model.init_args.n_embd": width, "model.init_args.n_layer": layers,
        "model.init_args.n_head": heads,
        "model.init_args.warmup_steps": max(10, round(0.025 * steps)),
        "trainer.max_steps": steps,
        "trainer.val_check_interval": max(5, steps // 40),
        "checkpoint.every_n_train_steps": max(50, steps // 10),
        "data.init_args.max_bytes": MAX_BYTES,
    }


def write(stage: str, name: str, body: dict, header: str) -> Path:
    out = HERE / stage / f"{name}.sweep.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(body, sort_keys=False))
    return out


def tune() -> list[Path]:
    paths = []
    for w, l, h, tpp in POINTS:
        name = point_name(w, l, tpp)
        f = fixed(w, l, h, tpp)
        body = {"name": f"scaling_tune_{name}", "out_dir": f"runs/scaling/tune/{name}",
                "configs": [BASE], "fixed": dict(f, seed_everything=0),
                "grid": {"model.init_args.rotation.scope": scopes(w),
                         "model.init_args.optimizer.init_args.lr": lrs(w)},
                "launch": {"jobs": 2}}
        head = (f"# Scaling series, stage 1 (tune), width {w}, {l} layers, {tpp} tokens/param: "
                f"{parameters(w, l):,} parameters, {f['trainer.max_steps']} steps.\n"
                "# Written by configs/scaling/make_sweeps.py tune (do not edit).\n")
        paths.append(write("tune", name, body, head))
    return paths


def best_lrs(name: str, want: list[str], grid: list[float]) -> dict[str, float]:
    """Each scope's lr with the lowest final validation loss among the point's tune runs."""
    from adamrot.report.events import load_runs
    from adamrot.report.tables import final_value

    root = ROOT / "runs/scaling/tune" / name
    runs = load_runs([root]) if root.is_dir() else []
    best: dict[str, tuple[float, float]] = {}
    found = 0
    for r in runs:
        cfg = r.config or {}
        scope = cfg.get("model.init_args.rotation.scope")
        lr = cfg.get("model.init_args.optimizer.init_args.lr")
        loss = final_value(r, "val/loss")
        if scope is None or lr is None or loss is None or not math.isfinite(loss):
            continue
        found += 1
        if scope not in best or loss < best[scope][1]:
            best[scope] = (float(lr), loss)
    if found < len(want) * len(grid):
        raise SystemExit(f"{root}: {found} of {len(want) * len(grid)} tune runs finished; "
                         f"run configs/scaling/tune/{name}.sweep.yaml first")
    edge = [s for s, (lr, _) in best.items() if lr in (min(grid), max(grid))]
    if edge:
        raise SystemExit(f"{name}: best lr at the edge of {grid} for {edge}: extend the grid and tune "
                         "again (the optimum must be interior)")
    return {s: lr for s, (lr, _) in best.items()}


def seeds() -> list[Path]:
    paths = []
    for w, l, h, tpp in POINTS:
        name = point_name(w, l, tpp)
        best = best_lrs(name, scopes(w), lrs(w))
        runs = [{"name": f"scope={s}_lr={best[s]:g}_seed={seed}",
                 "model.init_args.rotation.scope": s,
                 "model.init_args.optimizer.init_args.lr": best[s], "seed_everything": seed}
                for seed in SEEDS for s in scopes(w)]
        body = {"name": f"scaling_seeds_{name}", "out_dir": f"runs/scaling/seeds/{name}",
                "configs": [BASE], "fixed": fixed(w, l, h, tpp), "runs": runs,
                "launch": {"jobs": 2}}
        head = (f"# Scaling series, stage 2 (seeds {SEEDS} at each scope's best tuned lr), "
                f"{name}. Written by configs/scaling/make_sweeps.py seeds (do not edit).\n")
        paths.append(write("seeds", name, body, head))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=["tune", "seeds", "plan"])
    args = ap.parse_args(argv)
    if args.stage == "plan":
        for w, l, h, tpp in POINTS:
            f = fixed(w, l, h, tpp)
            print(f"{point_name(w, l, tpp):18s} {parameters(w, l):>9,} params "
                  f"{f['trainer.max_steps']:>6} steps {f['trainer.max_steps'] * TOKENS_PER_STEP:>11,} "
                  f"tokens")
        return 0
    for p in (tune() if args.stage == "tune" else seeds()):
        print(p.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
