"""Time and cost of a run before it runs: FLOPs per optimizer step (the model's own count:
``6·N·T`` plus attention for the GPT and ViT, the meta-device multiply-adds for ResNet), the
rotation's extra FLOPs and memory traffic per step, and the step time and GPU-hours at an MFU
that is either measured on a GPU (``benchmarks/gpu_check.sh`` writes ``runs/gpu_check.json``;
:func:`parse_gpu_check`) or **assumed** (:data:`ASSUMED_MFU`, labelled so in the table)."""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from typing import Optional

#: dense bf16 tensor-core peak, fp32 (no tensor core) peak, memory bandwidth (B/s)
GPU_SPECS = {"a100-40gb": (312e12, 19.5e12, 1.555e12), "a100-80gb": (312e12, 19.5e12, 2.039e12),
             "h100-80gb": (989e12, 67e12, 3.35e12), "h200": (989e12, 67e12, 4.8e12)}
GPU_NAMES = {"a100-40gb": "A100", "a100-80gb": "A100", "h100-80gb": "H100", "h200": "H200"}
#: model FLOPs utilisation assumed when no gpu_check.json is at hand (docs/CLUSTER.md)
ASSUMED_MFU = 0.30
#: share of the fp32 peak (or bandwidth) the rotation's small matmuls and gathers reach (assumed)
ROTATION_EFFICIENCY = 0.5
DEFAULT_CALIBRATION = os.path.join("runs", "gpu_check.json")
#: bytes moved per rotated element per step: read the gradient, write the shadow, read it back,
#: write the update, each through the blocks once more (read + write): 8 fp32 passes
ROTATION_BYTES_PER_ELEMENT = 32
PERMUTATION_BYTES_PER_ELEMENT = 8   # the int32 index read on the way in and on the way out


def rotation_work(views, config) -> dict:
    """Extra FLOPs and bytes per optimizer step of the rotation, per scope: a rotation of
    dimension ``d`` in blocks ``n`` (``k`` copies and a residual ``p``) applied to ``m``
    vectors costs ``m·(2·k·n² + 2·p²)`` FLOPs one way, twice per step (rotate the gradient,
    unrotate the update); an SVD view ``2·m²·k`` one way per dense basis of side ``m`` (``k``
    the other side) or ``4·m·k·r`` for ``r`` Householder reflectors (a side longer than
    ``svd_dense_max``), and a refresh every ``svd_refresh_every`` steps ``4·M·r² + 8·r³``
    (``M = max``, ``r = min`` of the sides)."""
    from rotations.sampling import block_structure

    by_scope: dict[str, dict] = {}
    glob = 0
    for v in views:
        s = config.scope_for(v.ptype)
        out, inp = v.shape
        if s == "none":
            continue
        w = by_scope.setdefault(s, {"flops": 0.0, "bytes": 0.0, "elements": 0})
        if s == "global":
            glob += out * inp
            continue
        if s == "svd":
            if min(out, inp) > 1:
                M, r = max(out, inp), min(out, inp)
                for m, k in ((out, inp), (inp, out)):     # each basis applied to G, both ways
                    dense = m <= config.svd_dense_max or m == r
                    w["flops"] += 2 * (2 * m * m * k if dense else 4 * m * k * r)
                w["flops"] += (4 * M * r * r + 8 * r ** 3) / max(1, config.svd_refresh_every)
            w["bytes"] += ROTATION_BYTES_PER_ELEMENT * out * inp
            w["elements"] += out * inp
            continue
        d, m = {"layerwise": (out * inp, 1), "outputwise": (inp, out),
                "inputwise": (out, inp)}[s]
        if d > 1:
            n, k, p = block_structure(d, config.block_size)
            w["flops"] += 2 * m * (2 * k * n * n + 2 * p * p)
            perm = PERMUTATION_BYTES_PER_ELEMENT if (config.permute and d > n
                                                     and s == "layerwise") else 0
            w["bytes"] += (ROTATION_BYTES_PER_ELEMENT + perm) * out * inp
        w["elements"] += out * inp
    if glob:
        n, k, p = block_structure(glob, config.block_size)
        perm = PERMUTATION_BYTES_PER_ELEMENT if (config.permute and glob > n) else 0
        by_scope["global"].update(flops=2.0 * (2 * k * n * n + 2 * p * p),
                                  bytes=float((ROTATION_BYTES_PER_ELEMENT + perm) * glob),
                                  elements=glob)
    return by_scope


@dataclass
class Cost:
    flops_per_sample: Optional[float]
    flops_per_step: Optional[float]
    rotation_flops_per_step: float
    rotation_bytes_per_step: float
    rotation_by_scope: dict          # scope -> {"flops", "bytes", "elements"} per step
    gpu: str
    mfu: float
    mfu_source: str                 # "assumed" or "measured: FILE (device)"
    step_s: Optional[float]
    rotation_s: float
    gpu_hours: Optional[float]
    world: int

    def to_dict(self) -> dict:
        return asdict(self)


def parse_gpu_check(text: str) -> dict:
    """The rows of ``benchmarks/train_throughput.py``'s table (what ``gpu_check.sh`` prints):
    ``{"device": ..., "rows": [{attention, scope, tokens_per_s, mfu, step_s, opt_ms,
    vs_adamw, peak_gb}]}``."""
    device = None
    rows = []
    num = r"([-+0-9.]+%?|-|n/a)"
    row = re.compile(rf"^(math|flash)\s+(\w+)\s+{num}\s+{num}\s+{num}\s+{num}\s+{num}\s+{num}"
                     rf"\s+{num}\s*$")
    for line in text.splitlines():
        m = re.match(r"^device: ([^;]+);", line)
        if m:
            device = m.group(1).strip()
        m = row.match(line.strip())
        if not m:
            continue

        def val(s: str) -> Optional[float]:
            if s in ("-", "n/a"):
                return None
            return float(s[:-1]) / 100 if s.endswith("%") else float(s)

        a, scope, tps, mfu, step, opt, share, extra, peak = m.groups()
        rows.append({"attention": a, "scope": "none" if scope == "plain" else scope,
                     "tokens_per_s": val(tps), "mfu": val(mfu), "step_s": val(step),
                     "opt_ms": val(opt), "vs_adamw": val(extra), "peak_gb": val(peak)})
    return {"device": device, "rows": rows}


def load_calibration(path: Optional[str]) -> Optional[dict]:
    path = path or DEFAULT_CALIBRATION
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    data["path"] = path
    return data if data.get("rows") else None


def estimate_cost(module, per_step: int, steps: Optional[int], world: int, gpu: str,
                  calibration: Optional[dict] = None, mfu: Optional[float] = None) -> Cost:
    fps = module.flops_per_sample() if hasattr(module, "flops_per_sample") else None
    fps = float(fps) if fps else None
    rot = getattr(module, "rotation", None)
    work = rotation_work(module.rotation_views(), rot) if rot is not None and rot.active else {}
    rflops = sum(w["flops"] for w in work.values())
    rbytes = sum(w["bytes"] for w in work.values())
    peak, fp32_peak, bandwidth = GPU_SPECS[gpu]
    attention = getattr(getattr(module, "config", None), "attention", "math")
    source, slowdown = "assumed", None
    if mfu is not None:
        source = "given (--mfu)"
    elif calibration:
        rows = {(r["attention"], r["scope"]): r for r in calibration["rows"]}
        plain = rows.get((attention, "none"))
        if plain and plain.get("mfu"):
            mfu = plain["mfu"]
            source = f"measured: {calibration['path']} ({calibration.get('device')})"
            scope_row = rows.get((attention, rot.scope if rot is not None else "none"))
            if scope_row and scope_row.get("vs_adamw") is not None and rot is not None \
                    and rot.scope != "none":
                slowdown = scope_row["vs_adamw"]
    mfu = mfu if mfu is not None else ASSUMED_MFU
    fstep = fps * per_step if fps else None
    model_s = fstep / (peak * mfu * world) if fstep else None
    rot_s = max(rflops / (fp32_peak * ROTATION_EFFICIENCY),
                rbytes / (bandwidth * ROTATION_EFFICIENCY)) if work else 0.0
    if slowdown is not None and model_s:
        rot_s = model_s * slowdown
        source += f"; rotation slowdown measured ({slowdown:+.1%})"
    step_s = model_s + rot_s if model_s is not None else None
    hours = step_s * steps * world / 3600 if (step_s is not None and steps) else None
    return Cost(flops_per_sample=fps, flops_per_step=fstep, rotation_flops_per_step=rflops,
                rotation_bytes_per_step=rbytes, rotation_by_scope=work, gpu=gpu, mfu=mfu, mfu_source=source,
                step_s=step_s, rotation_s=rot_s, gpu_hours=hours, world=world)


def main(argv=None) -> int:
    """``python -m adamrot.preflight.cost LOG OUT.json``: turn gpu_check.sh's output into the
    calibration file preflight reads."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m adamrot.preflight.cost GPU_CHECK_LOG OUT.json", file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as f:
        data = parse_gpu_check(f.read())
    if not data["rows"]:
        print(f"adamrot: error: {args[0]}: no throughput rows found", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args[1])), exist_ok=True)
    with open(args[1], "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    print(f"calibration for adamrot preflight: {args[1]} ({len(data['rows'])} rows, "
          f"{data['device']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
