"""``adamrot sweep FILE --preflight``: :mod:`adamrot.preflight` for every run of a sweep (its
``fit`` arguments exactly as the launcher will pass them, the kept global batch included) and
the total; also the first step of ``--launcher slurm``, which refuses to submit on an
error-level finding unless ``--no-preflight``. docs/CLUSTER.md ("Preflight")."""
from __future__ import annotations

import os
from typing import Callable, Optional

from adamrot.sweep.options import LaunchOptions
from adamrot.sweep.spec import RunSpec, SweepSpec, build_command, default_command


def fit_args(spec: SweepSpec, run: RunSpec, run_dir: str, opts: LaunchOptions) -> Optional[list]:
    """The arguments after ``fit`` of the run's command, or None when the sweep's command is not
    ``adamrot fit`` (a custom command: nothing to preflight)."""
    cmd = build_command(spec, run, run_dir, None, extra=opts.trainer_args())
    prefix = list(spec.command) if spec.command else default_command()
    if not prefix or prefix[-1] != "fit" or not any("adamrot" in os.path.basename(p) or
                                                    p == "adamrot.cli" for p in prefix):
        return None
    return cmd[len(prefix):]


def sweep_preflight(spec: SweepSpec, runs: list[RunSpec], opts: LaunchOptions,
                    gpu: Optional[str], say: Callable[[str], None]) -> Optional[dict]:
    """Preflight every run; print one row per run, the findings and the total; return the
    report (None when the sweep's command is not ``adamrot fit``)."""
    from adamrot.preflight.memory import fmt_bytes
    from adamrot.preflight.report import DEFAULT_COST_GPU, preflight

    target = gpu or DEFAULT_COST_GPU
    reports = {}
    for r in runs:
        argv = fit_args(spec, r, os.path.join(spec.out_dir, r.name), opts)
        if argv is None:
            say("preflight: skipped (the sweep's command is not `adamrot fit`)")
            return None
        reports[r.name] = preflight(argv, gpu=gpu)
    width = max(len(n) for n in reports)
    say(f"preflight of sweep {spec.name!r}: {len(runs)} run(s), cost on {target}")
    say(f"{'run':<{width}}  {'per step':>9} {'steps':>9} {'tokens':>8} {'mem/dev':>10} "
        f"{'fits':>4} {'max mb':>6} {'step s':>7} {'GPU-h':>8}  findings")
    total_h = total_tokens = total_images = 0.0
    unknown = 0
    for name, rep in reports.items():
        b, m, c, g = rep["batch"], rep["memory"], rep["cost"], rep["gpus"][target]
        n_err = sum(f["level"] == "error" for f in rep["findings"])
        n_warn = sum(f["level"] == "warning" for f in rep["findings"])
        tokens = f"{b['total_tokens'] / 1e9:.2f}B" if b["total_tokens"] else "-"
        say(f"{name:<{width}}  {b['per_step']:>9,} {b['steps'] or 0:>9,} {tokens:>8} "
            f"{fmt_bytes(m['total']):>10} {'yes' if g['fits'] else 'NO':>4} "
            f"{g['largest_micro_batch']:>6} "
            f"{(c['step_s'] or 0):>7.2f} {(c['gpu_hours'] or 0):>8,.0f}  "
            f"{n_err} error(s), {n_warn} warning(s)")
        if c["gpu_hours"] is None:
            unknown += 1
        total_h += c["gpu_hours"] or 0
        total_tokens += b["total_tokens"] or 0
        total_images += 0 if b["seq_len"] else (b["total_samples"] or 0)
    for name, rep in reports.items():
        for f in rep["findings"]:
            if f["level"] != "info":
                say(f"  {name}: {f['level']}: {f['message']}")
    mfu = next(iter(reports.values()))["cost"]
    say(f"total: {len(runs)} run(s), "
        + (f"{total_tokens / 1e9:,.2f}B tokens, " if total_tokens else "")
        + (f"{total_images:,.0f} images, " if total_images else "")
        + f"{total_h:,.0f} GPU-hours on {target} at MFU {mfu['mfu']:.0%} ({mfu['mfu_source']})"
        + (f"; {unknown} run(s) of unknown length not counted" if unknown else ""))
    return {"sweep": spec.name, "gpu": target, "runs": reports,
            "total": {"runs": len(runs), "gpu_hours": total_h, "tokens": total_tokens,
                      "images": total_images, "unknown_runs": unknown}}


def errors(report: Optional[dict]) -> list[str]:
    if not report:
        return []
    return [f"{name}: {f['message']}" for name, rep in report["runs"].items()
            for f in rep["findings"] if f["level"] == "error"]
