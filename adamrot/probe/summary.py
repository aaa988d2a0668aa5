"""What ``adamrot probe`` reports from its raw results: the gradient bound, the (1,1)-norm with
its interval, the Cauchy cross-check, Table-1 block means per row type, the Table-1 claim with
95 % intervals and the rows/directions they need (docs/CONVENTIONS.md §6), figures and the
printed summary."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from rotations.probes import (BLOCKS, difference_interval, evidence, mean_interval,
                              nested_interval)
from rotations.probes.intervals import LEVEL, rows_needed, stratified_interval

from .rows import HIST_BINS, HIST_HI, HIST_LO

CLAIM = ("Table 1: the other-layer block dominates, |r_i[I_other]·δ[I_other]| > "
         "|r_i[I]·δ[I]| for I = I_neuron and I_layer (mean over rows, and directions)")


def _mean(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else None


def summarize_rows(rows: list[dict]) -> dict:
    """Table-1-style means per row type and over all rows."""
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


def _verdict(a: dict, b: dict) -> str:
    if a["excludes"] and b["excludes"] and a["lo"] > 0 and b["lo"] > 0:
        return "holds"
    if (a["excludes"] and a["hi"] < 0) or (b["excludes"] and b["hi"] < 0):
        return "contradicted"
    return "unresolved"


def _needed(*ivs: dict, key: str = "rows_needed") -> Optional[int]:
    ns = [iv.get(key) for iv in ivs]
    return None if any(n is None for n in ns) else max(ns)


def table1_intervals(rows: list[dict], level: float = LEVEL) -> dict:
    """Intervals of the block contributions over the sampled rows (and random directions):
    signed means per block, and the paired dominance ``|c_other| − |c_I|`` per (row, direction)
    for I = neuron, layer; the claim's verdict (``holds``: both intervals above 0) and the rows
    (and directions) that would resolve it at the measured spread."""
    out: dict[str, Any] = {"level": level, "claim": CLAIM}
    rnd = [r["contributions"]["random"] for r in rows if "random" in r["contributions"]]
    if len(rnd) > 0:
        sec = {b: evidence(nested_interval([c[b] for c in rnd], level), 0.0, level)
               for b in BLOCKS}
        for b in ("neuron", "layer"):
            diffs = [[abs(o) - abs(x) for o, x in zip(c["other"], c[b])] for c in rnd]
            sec[f"other_minus_{b}"] = evidence(nested_interval(diffs, level), 0.0, level)
        a, b = sec["other_minus_neuron"], sec["other_minus_layer"]
        sec["verdict"] = _verdict(a, b)
        sec["rows_needed"] = _needed(a, b)
        sec["rows_needed_any_directions"] = _needed(a, b, key="rows_needed_any_directions")
        sec["directions_needed"] = _needed(a, b, key="directions_needed")
        out["random"] = sec
    upd = [r["contributions"]["update"] for r in rows if "update" in r["contributions"]]
    if upd:
        sec = {b: evidence(mean_interval([c[b] for c in upd], level), 0.0, level)
               for b in BLOCKS}
        for b in ("neuron", "layer"):
            sec[f"other_minus_{b}"] = evidence(
                mean_interval([abs(c["other"]) - abs(c[b]) for c in upd], level), 0.0, level)
        a, b = sec["other_minus_neuron"], sec["other_minus_layer"]
        sec["verdict"] = _verdict(a, b)
        sec["rows_needed"] = _needed(a, b)
        out["update"] = sec
    return out


def one_one_summary(rows: list[dict], type_sizes: Optional[dict] = None,
                    level: float = LEVEL) -> Optional[dict]:
    """``‖H‖_(1,1)/d`` as the mean L1 norm of the sampled rows, its standard error, interval
    and the rows a ±10 % interval needs. Rows are drawn round-robin over types, so with
    ``type_sizes`` (coordinates per type) the type-weighted (stratified) mean and its interval
    are added under ``stratified``: the unbiased estimate over the sampled types' coordinates."""
    l1s = [r["l1"] for r in rows]
    if not l1s:
        return None
    iv = mean_interval(l1s, level)
    out = {"estimate": iv["mean"], "stderr": iv["se"], "rows": len(l1s), "sd": iv["sd"],
           "level": level, "ci": None if iv["lo"] is None else [iv["lo"], iv["hi"]],
           "half_width": iv["half_width"],
           "rows_needed_rel10": rows_needed(0.1 * iv["mean"], iv["sd"], level),
           "definition": "mean L1 norm of the sampled rows = estimate of "
                         "||H||_(1,1)/d with ||H||_(1,1) = sum_mn |H_mn|"}
    if type_sizes:
        strata: dict[str, list] = {}
        for r in rows:
            strata.setdefault(r["ptype"], []).append(r["l1"])
        st = stratified_interval(strata, {t: type_sizes[t] for t in strata}, level)
        out["stratified"] = {
            "estimate": st["mean"], "stderr": st["se"], "df": st["df"],
            "ci": None if st["lo"] is None else [st["lo"], st["hi"]], "weights": st["weights"],
            "definition": "sum over row types of (coordinates of the type / coordinates of "
                          "the sampled types) x mean L1 of the type's sampled rows"}
    return out


def compare_one_one(a: dict, b: dict, level: float = LEVEL) -> dict:
    """Fig. 8 between two probes (``probe.json`` dicts, e.g. a rotated run and its baseline):
    the Welch interval of ``‖H‖_(1,1)/d`` of ``a`` minus that of ``b`` over their sampled rows,
    and the rows per probe that would make it exclude 0 at these spreads."""
    ivs = [mean_interval([r["l1"] for r in res["hessian"]["rows"]], level) for res in (a, b)]
    return difference_interval(*ivs, level)


def bound_summary(per_batch: list[float], argmax: list[int], space) -> Optional[dict]:
    """Alg. 1's bound (max over batches of ``‖R g_B‖_∞``) and where it is attained."""
    if not per_batch:
        return None
    bmax = max(range(len(per_batch)), key=lambda k: per_batch[k])
    where = space.locate(argmax[bmax])
    return {"value": per_batch[bmax], "batches": len(per_batch), "argmax_batch": bmax,
            "argmax_index": argmax[bmax], "argmax_view": where.view,
            "argmax_ptype": where.ptype, "per_batch_mean": sum(per_batch) / len(per_batch),
            "definition": "max over the T batches of ||R g_B||_inf (Alg. 1)"}


def cauchy_summary(gam, indices: list[int], rows_by_index: dict, vectors: int,
                   batches: int) -> dict:
    """The Cauchy cross-check over all ``d`` rows and on the sampled rows."""
    sampled = [(float(gam[i]), rows_by_index[str(i)]["l1"]) for i in indices]
    return {"estimate": float(gam.mean()), "vectors": vectors, "batches": batches,
            "row_rel_sd": math.pi / (2 * math.sqrt(vectors)),
            "sampled_rows_cauchy_mean": _mean([a for a, _ in sampled]),
            "sampled_rows_exact_mean": _mean([b for _, b in sampled]),
            "sampled_rows_log_ratio_mean": _mean([math.log(a / b) for a, b in sampled
                                                  if a > 0 and b > 0]),
            "definition": "mean over all d rows of cos(pi/2M)^M exp(mean_j log|(H z_j)_i|), "
                          "z_j iid standard Cauchy: estimates ||H||_(1,1)/d"}


def write_figures(out: Path, rows: list[dict]) -> list[str]:
    """Fig. 9 style: distribution of |H_ij| (log10) per block and row type; and the
    Table-1 contributions as bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(dict.fromkeys(r["ptype"] for r in rows))
    w = (HIST_HI - HIST_LO) / HIST_BINS
    centers = [HIST_LO + (k + 0.5) * w for k in range(HIST_BINS)]
    fig, axes = plt.subplots(1, len(types), figsize=(4 * len(types), 3.4), squeeze=False)
    colors = {"neuron": "tab:blue", "layer": "tab:orange", "other": "tab:green"}
    for ax, t in zip(axes[0], types):
        rs = [r for r in rows if r["ptype"] == t]
        for b in BLOCKS:
            tot = [sum(r["blocks"][b]["log10_hist"][k] for r in rs) for k in range(HIST_BINS)]
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


def _ci(iv: dict) -> str:
    if iv.get("lo") is None:
        return f"{iv['mean']:+.3g} (one sample: no interval)"
    return f"{iv['mean']:+.3g} [{iv['lo']:+.3g}, {iv['hi']:+.3g}]"


def _n(x) -> str:
    return "n/a" if x is None else str(x)


def print_summary(res: dict) -> None:
    gb, oo = res.get("gradient_bound"), res.get("one_one_norm")
    ca = res.get("one_one_norm_cauchy")
    rot = res.get("rotation") or {}
    print(f"probe of {res['checkpoint']} (step {res['global_step']}, d = {res['d']}, "
          f"rotation {rot.get('scope')}{' only=' + str(rot['only']) if rot.get('only') else ''})")
    if gb:
        print(f"  gradient bound max_B ||R g_B||_inf = {gb['value']:.4g} over {gb['batches']} "
              f"batches (at {gb['argmax_view']})")
    if oo:
        ci = (f" ± {oo['stderr']:.2g} s.e., 95% CI [{oo['ci'][0]:.4g}, {oo['ci'][1]:.4g}]; "
              f"±10% needs {_n(oo['rows_needed_rel10'])} rows" if oo.get("ci") else "")
        print(f"  ||H||_(1,1)/d (mean row L1, {oo['rows']} rows) = {oo['estimate']:.4g}{ci}")
        st = oo.get("stratified")
        if st:
            sci = f", 95% CI [{st['ci'][0]:.4g}, {st['ci'][1]:.4g}]" if st.get("ci") else ""
            print(f"    weighted by type size (stratified) = {st['estimate']:.4g}{sci}")
    if ca:
        print(f"  Cauchy cross-check ({ca['vectors']} vectors, all rows) = {ca['estimate']:.4g}")
    summ = (res.get("hessian") or {}).get("summary") or {}
    if "all" in summ:
        for b in BLOCKS:
            e = summ["all"][b]
            rnd, upd = e.get("random_mean"), e.get("update_mean")
            print(f"  I_{b:6s} mean|H_ij| = {e['mean_abs_value']:.3g}   r_i[I]·δ[I]: random "
                  f"{'n/a' if rnd is None else format(rnd, '+.3g')}, update "
                  f"{'n/a' if upd is None else format(upd, '+.3g')}")
    t1 = (res.get("hessian") or {}).get("intervals") or {}
    for kind in ("random", "update"):
        sec = t1.get(kind)
        if not sec:
            continue
        extra = (f", or {_n(sec['directions_needed'])} directions at these rows"
                 if kind == "random" else "")
        print(f"  Table 1 ({kind} δ, 95% CI): |other|-|neuron| {_ci(sec['other_minus_neuron'])}, "
              f"|other|-|layer| {_ci(sec['other_minus_layer'])}: {sec['verdict']} (intervals "
              f"clear 0 from {_n(sec['rows_needed'])} rows at this spread{extra})")
