"""The CPU twins' tables and figures for docs/REPRODUCE.md, regenerated from the run directories.

    .venv/bin/python configs/paper/cpu/summarize.py [--runs runs/paper/cpu] [--write-docs]
    .venv/bin/python configs/paper/cpu/summarize.py --check-flat RUN_DIR [RUN_DIR ...]

Per experiment it runs the report (adamrot.report: reading, smoothing, intervals, slowdown) into
``runs/paper/cpu/reports/<name>/`` and copies a small figure to ``docs/figures/``; it adds the
numbers the report does not make (second-moment spread, probes, update orthogonality, the SGD
curve distance), each as mean ± 95 % t interval over seeds with the seed count. All tables go to
``runs/paper/cpu/catalogue.md``; ``--write-docs`` also replaces the blocks between
``<!-- generated:NAME -->`` and ``<!-- end:NAME -->`` in docs/REPRODUCE.md. An experiment
without runs reads "not run". ``--check-flat`` exits 1 unless the seed-mean val/loss of the runs
improves less than 2 % over its last 20 % of steps (the full tier's step-count check).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np

from adamrot import report as rp
from adamrot.report import significance
from adamrot.report.tables import (Comparison, add_equivalence, compare_detail, csv_text, md_row,
                                   p_text, pm, seeds_text, tost_text)
from adamrot.runs import atomic_write

ROOT = Path(__file__).resolve().parents[3]
FIG = ROOT / "docs" / "figures"
DOC = ROOT / "docs" / "REPRODUCE.md"
NOT_RUN = "_not run yet (full tier: `bash configs/paper/run_cpu_twins.sh full`)_\n"

# Equivalence margins of the TOST columns: our choices (no paper states one). 0.02 nats per
# byte is 1.3 % of the unrotated twin's final loss (1.558) and 5 % of global's cost (+0.38);
# 2 points of top-1 accuracy for the vision twins; 0.05 in the CV of the update's singular
# values, 3 % of the unrotated CV (1.6).
LOSS_MARGIN, ACC_MARGIN, CV_MARGIN = 0.02, 0.02, 0.05

# every difference the blocks print, for Holm's adjustment over the whole catalogue (main)
FAMILY: list[dict] = []


def runs_key(*groups) -> tuple:
    """Identifies a comparison by the runs on each side (run directories), in either order
    (a difference and its negative are one test)."""
    return frozenset(frozenset(os.path.realpath(r.path) if r.path else r.name for r in g.runs)
                     for g in groups)


# Where a paper claims "no difference" (the equivalence claims, tested by TOST and adjusted
# with Holm among themselves): block -> labels ("*": every label of the block).
EQUAL_CLAIMS = {
    "fig1a": {"scope=outputwise"},          # arXiv §3.1 "Results" 4: no significant degradation
    "appA4": {"scope=global, attention=math"},   # arXiv App. A.4: identical to unrotated SGD
    "appC2": {'only={"embedding":"outputwise"}'},   # arXiv App. C.2: degradation unnoticeable
    "appC1": {"*"},                         # arXiv §3.1 "Results" 3: minimal degradation
    "og_one_beta": {"*"},                   # O&G abstract: beta1 = beta2 near-optimal
}


def claims_equal(block: str, label: str) -> bool:
    labels = EQUAL_CLAIMS.get(block, set())
    return "*" in labels or label in labels


def register(where: str, what: str, cmp, margin: float | None = None,
             key: tuple | None = None, claim: bool = False) -> None:
    """Add a difference (a ``tables.Comparison``) to the catalogue's family; one with the same
    ``key`` (the same runs on both sides, reported in two blocks) is listed once, naming both
    places. ``claim``: a paper says there is no difference (an equivalence claim)."""
    iv = cmp.iv
    if iv.p is None:
        return
    key = (where, what) if key is None else key
    for d in FAMILY:
        if d["key"] == key:
            if where != d["where"] and where not in d["also"]:
                d["also"].append(where)
            d["claim"] = d["claim"] or (claim and margin is not None)
            return
    e = None if margin is None else cmp.equivalence(margin)
    FAMILY.append(dict(key=key, where=where, what=what, iv=iv, also=[], cmp=cmp,
                       margin=margin, tost=e, claim=claim and e is not None))


# name -> (inputs relative to the runs root, report keyword arguments, figure?)
FIG1A = "fig1a_gpt2_scopes"
SEEDS3 = "_seed=[012]"
MARGINS = {"fig1a": LOSS_MARGIN, "fig5": LOSS_MARGIN, "appA1": LOSS_MARGIN,
           "appA4": LOSS_MARGIN, "appC2": LOSS_MARGIN, "svd_refresh": LOSS_MARGIN,
           "appB2": LOSS_MARGIN, "muon": LOSS_MARGIN, "og_optimizers": LOSS_MARGIN,
           "og_one_beta": LOSS_MARGIN, "fig1b": ACC_MARGIN, "appC1": ACC_MARGIN}
REPORTS = {
    "fig1a": ([FIG1A], dict(label_keys=["scope"], smooth=2, train_smooth=5), True),
    "fig5": ([f"{FIG1A}/scope=none_seed=*", f"{FIG1A}/scope=outputwise_seed=*",
              f"{FIG1A}/scope=global_seed=*", f"{FIG1A}/scope=svd_seed=*"],
             dict(label_keys=["scope"], smooth=2, train_smooth=5), True),
    "appA1": ([f"{FIG1A}/scope=none{SEEDS3}", f"{FIG1A}/scope=global{SEEDS3}", "appA1_block_size"],
              dict(label_keys=["scope", "rotation.block_size"], smooth=2, train_smooth=5), True),
    "appA4": (["appA4_sgd_flash"], dict(label_keys=["scope", "attention"], train_smooth=1), True),
    "appC2": ([f"{FIG1A}/scope=none{SEEDS3}", "appC2_arch_aware"],
              dict(label_keys=["only"], baseline="only=null", smooth=2, train_smooth=5), True),
    "svd_refresh": ([f"{FIG1A}/scope=none{SEEDS3}", f"{FIG1A}/scope=svd{SEEDS3}", "svd_refresh"],
                    dict(label_keys=["scope", "svd_refresh_every"], smooth=2), False),
    "appB2": ([f"{FIG1A}/scope=none{SEEDS3}", f"{FIG1A}/scope=global{SEEDS3}", "appB2_beta2"],
              dict(label_keys=["scope"], group_keys=["betas"], smooth=2, train_smooth=5), True),
    "muon": ([f"{FIG1A}/scope=none{SEEDS3}", f"{FIG1A}/scope=svd{SEEDS3}", "muon"],
             dict(label_keys=["optimizer", "scope"], baseline="optimizer=AdamW,scope=none",
                  smooth=2, train_smooth=5), True),
    "og_optimizers": (["og_optimizers", "?og_optimizers_seeds"],
                      dict(label_keys=["optimizer", "betas", "lr"], train_smooth=3), False),
    "og_one_beta": (["og_one_beta", "?og_one_beta_seeds"],
                    dict(label_keys=["optimizer", "lr"], train_smooth=3), False),
    "fig1b": (["fig1b_vit_scopes"], dict(label_keys=["scope"], metric="val/acc1"), True),
    "appC1": (["appC1_resnet50_scopes"], dict(label_keys=["scope"], metric="val/acc1"), True),
}


def inputs(runs: Path, patterns: list[str]) -> list[Path]:
    """The run directories of an experiment; none unless every pattern matches (``?`` first:
    optional)."""
    out: list[Path] = []
    for p in patterns:
        hit = sorted(x for x in runs.glob(p.lstrip("?")) if x.is_dir())
        if not hit and not p.startswith("?"):
            return []
        out += hit
    return out


def shrink(src: Path, dst: Path, width: int = 900) -> None:
    try:
        from PIL import Image
        im = Image.open(src)
        if im.width > width:
            im = im.resize((width, int(im.height * width / im.width)))
        im.convert("P", palette=Image.ADAPTIVE, colors=128).save(dst, optimize=True)
    except Exception:  # noqa: BLE001 - PIL missing or odd image: copy as is
        shutil.copy(src, dst)


def report(name: str, runs: Path, figures: Path | None, doc_dir: Path) -> str:
    patterns, kw, fig = REPORTS[name]
    paths = inputs(runs, patterns)
    if not paths:
        return NOT_RUN
    out = runs / "reports" / name
    shutil.rmtree(out, ignore_errors=True)          # this script's own output: no stale files
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(record=True):
            s = rp.write_report(rp.load_runs(paths), out, sources=patterns, **kw)
    except rp.ReportError as e:
        return f"_report failed: {e}_\n"
    margin = MARGINS.get(name)
    if margin is not None and s.has_slowdown:
        add_equivalence(s, margin)
        atomic_write(out / "summary.csv", csv_text(s.columns, s.rows))
    for c, r in zip(s.cells, s.rows):
        b = s.baselines.get(id(c))
        if r.get("diff_p") is not None and b is not None:
            grp = f" [{c.group}]" if c.group else ""
            register(name, f"{c.label}{grp} − {b.label}", compare_detail(c, b, s.metric), margin,
                     runs_key(c, b), claims_equal(name, c.label))
    text = rp.summary_markdown(s)
    for png in sorted(out.glob("loss_curves*.png")) if figures is not None and fig else []:
        dst = figures / f"full_{name}{png.stem[len('loss_curves'):]}.png"
        shrink(png, dst)
        text += f"\n![{name}]({os.path.relpath(dst.resolve(), doc_dir)})\n"
    if (out / "best_lr.md").exists():
        text += "\n" + (out / "best_lr.md").read_text().split("\n\n", 2)[-1]
    if name.startswith("og_"):
        text += "\n" + ranking(s, name)
    if s.notes:
        text += "\n" + "\n".join(f"- {n}" for n in s.notes) + "\n"
    return text


# Orvieto & Gower's pairwise orderings that the earlier catalogue contradicted (their 160M
# ranking: Adam < Signum < RMSprop < signSGD < SGD): (better per the paper, worse per the paper,
# label prefixes of the 3-seed labels at each optimizer's best lr)
OG_PAIRS = [("Adam (0.95, 0.95)", "RMSprop", "optimizer=AdamW, betas=[0.95,0.95]",
             "optimizer=AdamW, betas=[0.0,0.95]"),
            ("signSGD", "SGD-M", "optimizer=SignSGD,", "optimizer=SGD,")]


def og_pairs(s: rp.Summary, cells: list, name: str) -> str:
    """The paper's pairwise claims among the 3-seed labels: Δ = (paper's better) − (paper's
    worse), negative when the paper's order holds."""
    out = []
    for better, worse, pa, pb in OG_PAIRS:
        a = next((c for c, _ in cells if c.label.startswith(pa)), None)
        b = next((c for c, _ in cells if c.label.startswith(pb)), None)
        if a is None or b is None:
            continue
        d = compare_detail(a, b, "val/loss")
        if d is None or not d.iv.has_interval:
            continue
        register(name, f"{a.label} − {b.label}", d, LOSS_MARGIN, runs_key(a, b))
        out.append(f"| {better} − {worse} | {d.iv.value:+.4f} ± {d.iv.half_width:.4f} | "
                   f"{p_text(d.iv.p)} |")
    if not out:
        return ""
    return ("\nThe paper's orderings that the earlier catalogue contradicted (Δ < 0: the "
            "paper's order; Holm in [all differences](#m-holm)):\n\n"
            "| paper: better − worse | Δ final val loss (paired) | p |\n|---|---|---|\n"
            + "\n".join(out) + "\n")


def ranking(s: rp.Summary, name: str = "og") -> str:
    """The labels with at least 3 seeds (each optimizer at its best lr), best first, each with
    its difference to the best (paired by seed), its p-value and the equivalence test."""
    cells = [(c, r) for c, r in zip(s.cells, s.rows) if r["n_seeds"] >= 3
             and r["final_val_loss_mean"] is not None and np.isfinite(r["final_val_loss_mean"])]
    if not cells:
        return "_no optimizer has 3 seeds at its best lr yet_\n"
    cells.sort(key=lambda t: t[1]["final_val_loss_mean"])
    best = cells[0][0]
    lines = ["| rank | optimizer at its best lr | seeds | final val loss | perplexity | "
             f"Δ vs best | p | Δ excludes 0 (before Holm) | equivalent within ±{LOSS_MARGIN:g} "
             "(TOST) |", "|---|---|---|---|---|---|---|---|---|"]
    for i, (c, r) in enumerate(cells, 1):
        d = compare_detail(c, best, "val/loss") if c is not best else None
        iv = None if d is None else d.iv
        dtxt = "-" if iv is None else f"{iv.value:+.4f}" + (
            f" ± {iv.half_width:.4f}" if iv.has_interval else " (1 seed)")
        exc = "-" if iv is None or not iv.has_interval else (
            "yes" if iv.excludes_zero else "no" + seeds_text(d.seeds_for_power()))
        e = None if d is None else d.equivalence(LOSS_MARGIN)
        eq = "-" if e is None else tost_text(e.p, e.equivalent,
                                            d.seeds_for_equivalence(LOSS_MARGIN))
        if d is not None:
            register(name, f"{c.label} − {best.label}", d, LOSS_MARGIN, runs_key(c, best),
                     claims_equal(name, c.label))
        lines.append(f"| {i} | {c.label} | {r['n_seeds']} | "
                     f"{pm(r['final_val_loss_mean'], r['final_val_loss_ci95'], r['n_seeds'])} | "
                     f"{np.exp(r['final_val_loss_mean']):.2f} | {dtxt} | "
                     f"{'-' if iv is None else p_text(iv.p)} | {exc} | {eq} |")
    return "\n".join(lines) + "\n" + (og_pairs(s, cells, name) if name == "og_optimizers" else "")


def _ci_row(label: str, xs: list[float], nd: int = 3, unit: str = "") -> str:
    iv = rp.mean_ci(xs)
    if not xs:
        return f"| {label} | 0 | not run |"
    val = f"{iv.value:.{nd}g}{unit}"
    return f"| {label} | {iv.n} | " + (f"{val} (1 seed)" if iv.n == 1 else
                                      f"{val} ± {iv.half_width:.2g}") + " |"


def _seed_table(lines: list[str], vals: dict[str, dict[int, float]], name: str = "",
                margin: float | None = None, claims: tuple[str, ...] = ()) -> str:
    """One row per scope (``vals[scope][seed]``): mean ± 95 % t interval over seeds, and the
    difference from none paired by seed (over the seeds both have) with its p-value, the
    seeds an unresolved difference would need for 80 % power at this spread and, with
    ``margin``, the equivalence test (TOST)."""
    if not vals:
        return NOT_RUN
    base = vals.get("none", {})
    for s, v in vals.items():
        row = _ci_row(s, [v[k] for k in sorted(v)])
        common = sorted(set(v) & set(base))
        if s == "none" or len(common) < 2:
            lines.append(row + " - | - | - |" + (" - |" if margin is not None else ""))
            continue
        a, b = [v[k] for k in common], [base[k] for k in common]
        iv = rp.diff_ci(a, b, paired=True)
        cmp = Comparison(iv, float(np.std([x - y for x, y in zip(a, b)], ddof=1)))
        if name:
            register(name, f"{s} − none", cmp, margin, claim=s in claims)
        cell = f" {iv.value:+.3g} ± {iv.half_width:.2g} | {p_text(iv.p)} | " + (
            "yes" if iv.excludes_zero else "no" + seeds_text(cmp.seeds_for_power())) + " |"
        if margin is not None:
            e = cmp.equivalence(margin)
            cell += " " + ("-" if e is None else tost_text(
                e.p, e.equivalent, cmp.seeds_for_equivalence(margin))) + " |"
        lines.append(row + cell)
    return "\n".join(lines) + "\n"


def _seed_of(run_dir: Path) -> int:
    """The seed in a run directory named ``..._seed=N``."""
    return int(run_dir.name.rsplit("=", 1)[1])


def per_seed(runs: Path, sweep: str, scope: str) -> list[Path]:
    return sorted(p for p in runs.glob(f"{sweep}/scope={scope}_seed=*") if p.is_dir())


def fig6(runs: Path) -> str:
    """Spread (sd of log10 v) of Adam's second moments at the last step, per seed."""
    lines = ["| scope | seeds | sd of log10 v at the last step |", "|---|---|---|"]
    sds = {}
    for s in ("none", "global"):
        vals = [h["sd"] for d in per_seed(runs, FIG1A, s)
                if (h := rp.read_last_histogram(d, "second_moment/log10_v/all")) is not None]
        sds[s] = vals
        lines.append(_ci_row(s, vals))
    if not any(sds.values()):
        return NOT_RUN
    if len(sds["none"]) > 1 and len(sds["none"]) == len(sds["global"]):
        d = rp.diff_ci(sds["global"], sds["none"], paired=True)
        register("fig6", "global − none", Comparison(d, float(np.std(
            np.subtract(sds["global"], sds["none"]), ddof=1))))
        lines.append(f"\nglobal − none (paired by seed): {d.value:+.3f} ± {d.half_width:.3f}; "
                     f"p {p_text(d.p)}; excludes 0: {'yes' if d.excludes_zero else 'no'}")
    return "\n".join(lines) + "\n"


def appA4(runs: Path) -> str:
    """Max |Δ train loss| of each SGD run against the unrotated math run of the same seed."""
    d = runs / "appA4_sgd_flash"
    if not d.is_dir():
        return NOT_RUN
    loaded = {r.name: r for r in rp.load_runs([d])}
    out = ["| run | seeds | max \\|Δ train loss\\| vs unrotated (same seed) |", "|---|---|---|"]
    for kind in ("global_math", "global_flash"):
        diffs = []
        for name, r in loaded.items():
            m = re.fullmatch(rf"sgd_{kind}_seed=(\d+)", name)
            base = loaded.get(f"sgd_none_math_seed={m.group(1)}") if m else None
            if base is None or r.curve("train/loss") is None or base.curve("train/loss") is None:
                continue
            (s1, v1), (s0, v0) = r.curve("train/loss"), base.curve("train/loss")
            common, i1, i0 = np.intersect1d(s1, s0, return_indices=True)
            if common.size:
                diffs.append(float(np.max(np.abs(v1[i1] - v0[i0]))))
        out.append(_ci_row(kind.replace("_", "+"), diffs))
    return "\n".join(out) + "\n"


def _iv(e: dict | None, nd: str = ".2e") -> str:
    """An interval dict of adamrot probe (``mean``, ``half_width``, ``excludes``)."""
    if not e or e.get("mean") is None:
        return "-"
    h = e.get("half_width")
    return f"{e['mean']:{nd}}" + ("" if h is None else f" ± {h:.1e}")


def fig7(runs: Path) -> str:
    """Fig. 7's L∞ gradient bound per seed (seed 0 from the Fig. 8 probe, the other seeds from
    ``probe_linf``; both over 50 batches), mean ± 95 % t interval and the paired Δ vs none."""
    vals: dict[str, dict[int, float]] = {}
    for s in ("none", "outputwise", "global", "svd"):
        for d in per_seed(runs, FIG1A, s):
            for sub in ("probe", "probe_linf"):
                p = d / sub / "probe.json"
                if p.exists() and (g := json.loads(p.read_text()).get("gradient_bound")):
                    vals.setdefault(s, {})[_seed_of(d)] = float(g["value"])
                    break
    return _seed_table(["| scope | seeds | L∞ bound | Δ vs none (paired over seeds) | p | "
                        "Δ excludes 0 (before Holm) |", "|---|---|---|---|---|---|"], vals, "fig7")


def probes(runs: Path) -> str:
    """Fig. 7 / 8 / Table 1 from probe.json, with the probe's own intervals over the sampled
    Hessian rows (and random directions) and the rows an unresolved claim would need."""
    from adamrot.probe.summary import compare_one_one

    res = {}
    for s in ("none", "outputwise", "global", "svd"):
        p = runs / FIG1A / f"scope={s}_seed=0" / "probe" / "probe.json"
        if p.exists():
            res[s] = json.loads(p.read_text())
    if not res:
        return NOT_RUN
    lines = ["| scope | L∞ bound (Fig. 7) | rows | (1,1)-norm/d (Fig. 8) | Δ vs none (Welch) | "
             "Table 1 along the update: neuron / layer / other | verdict (rows needed) | "
             "random directions: neuron / layer / other | verdict (rows, directions needed) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s, d in res.items():
        oo = d.get("one_one_norm") or {}
        ivs = (d.get("hessian") or {}).get("intervals") or {}
        dv = "-"
        if s != "none" and "none" in res:
            c = compare_one_one(d, res["none"])
            dv = _iv(c) + (f" (excludes 0: {'yes' if c.get('excludes') else 'no'})"
                           if c.get("half_width") is not None else "")
        cells = []
        for kind in ("update", "random"):
            sec = ivs.get(kind) or {}
            cells.append(" / ".join(_iv(sec.get(b)) for b in ("neuron", "layer", "other")))
            need = [f"{sec[k]} {k.split('_')[0]}" for k in ("rows_needed", "directions_needed")
                    if sec.get(k) is not None]
            cells.append(f"{sec.get('verdict', '-')}" + (f" ({', '.join(need)})" if need else ""))
        lines.append(f"| {s} | {(d.get('gradient_bound') or {}).get('value', float('nan')):.3f} | "
                     f"{oo.get('rows', 0)} | {_iv({'mean': oo.get('estimate'), 'half_width': oo.get('half_width')}, '.3g')} | "
                     f"{dv} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\n± = 95 % interval over the sampled rows (random directions: "
                               "rows and directions nested), from `adamrot probe`; one checkpoint "
                               "(seed 0) per scope. Table 1's claim: the other-layer block "
                               "dominates (docs/CONVENTIONS.md §6).\n")


def orth(runs: Path) -> str:
    """Mean CV of the update's singular values over the resumed steps, per seed, and the
    difference from none paired by seed."""
    cvs: dict[str, dict[int, float]] = {}
    for s in ("none", "outputwise", "global", "svd"):
        for d in sorted((runs / "neurips_update_orth").glob(f"scope={s}_seed=*")):
            c = rp.RunData(d.name, {}, rp.read_scalars(d)).curve("orth/cv/all") \
                if d.is_dir() and rp.find_event_dirs(d) else None
            if c is not None:
                cvs.setdefault(s, {})[_seed_of(d)] = float(np.mean(c[1]))
    return _seed_table(["| scope | seeds | mean CV of the singular values of A | "
                        "Δ vs none (paired over seeds) | p | Δ excludes 0 (before Holm) | "
                        f"equivalent within ±{CV_MARGIN:g} (TOST) |", "|---|---|---|---|---|---|---|"],
                       cvs, "orth", CV_MARGIN, claims=("outputwise",))


def _log_ratio_cells(tests: list[list[float]], alpha: float = 0.05) -> list[tuple[str, str]]:
    """Per test (the per-row log10 ratios of one type and pair of blocks): mean ± 95 % t
    interval and what it says about the paper's ">" claim after Holm's adjustment over all the
    tests of the table: larger / **smaller** / unresolved (rows for 80 % power at the
    Bonferroni level of the table)."""
    ivs = [rp.mean_ci(xs) for xs in tests]
    adj = significance.holm([iv.p for iv in ivs])
    m = sum(a is not None for a in adj)
    out = []
    for xs, iv, a in zip(tests, ivs, adj):
        if not iv.has_interval:
            out.append((f"{iv.value:+.2f} (1 row)", "one row"))
            continue
        cell = f"{iv.value:+.2f} ± {iv.half_width:.2f}"
        if a < alpha:
            out.append((cell, ("larger" if iv.value > 0 else "**smaller**")
                        + f" (p Holm {p_text(a)})"))
            continue
        need = significance.seeds_for_power(iv.value, float(np.std(xs, ddof=1)), level=1 - alpha / m)
        out.append((cell, f"unresolved (p Holm {p_text(a)}" +
                     (f"; {need} rows for 80 % power)" if need else ")")))
    return out


def fig9(runs: Path) -> str:
    """Mean |H_ij| in the same-neuron / same-layer / other-layer blocks of rows of each type, and
    the paper's claim (same neuron > same layer > other layers) tested row by row: the log10
    ratio of two blocks' mean |H_ij| in the same row, mean ± 95 % t interval over the rows,
    verdicts after Holm over all the ratio tests of the table."""
    lines = ["| scope | type | rows | same neuron | same layer | other layers | "
             "log10 neuron/layer | verdict | log10 layer/other | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    table: list[tuple[str, list[str], list]] = []     # (row head, block cells, ratio tests)
    for s in ("none", "global"):
        p = runs / FIG1A / f"scope={s}_seed=0" / "probe_types" / "probe.json"
        if not p.exists():
            continue
        rows = (json.loads(p.read_text()).get("hessian") or {}).get("rows") or []
        for t in dict.fromkeys(r["ptype"] for r in rows):
            rs = [r for r in rows if r["ptype"] == t]
            m = {b: [r["blocks"][b]["mean_abs"] for r in rs] for b in ("neuron", "layer", "other")}
            cells = []
            for b in ("neuron", "layer", "other"):
                iv = rp.mean_ci(m[b])
                cells.append(f"{iv.value:.2e}" + (f" ± {iv.half_width:.1e}" if iv.has_interval
                                                   else " (1 row)"))
            ratios = []
            for hi, lo in (("neuron", "layer"), ("layer", "other")):
                ok = [(a, b) for a, b in zip(m[hi], m[lo]) if a > 0 and b > 0]
                ratios.append([float(np.log10(a / b)) for a, b in ok] if ok else None)
            table.append((f"| {s} | {t} | {len(rs)} | ", cells, ratios))
    if not table:
        return NOT_RUN
    tests = [xs for _, _, ratios in table for xs in ratios if xs]
    done = iter(_log_ratio_cells(tests))
    for head, cells, ratios in table:
        for xs in ratios:
            cells.extend(next(done) if xs else ("-", "zero block"))
        lines.append(head + " | ".join(cells) + " |")
    note = ("\nlog10 ratios are paired within each Hessian row (one seed-0 checkpoint per scope); "
            "**larger** agrees with the paper's claim (same neuron > same layer > other layers), "
            "**smaller** contradicts it, each after Holm's adjustment over the "
            f"{len(tests)} ratio tests of this table; an unresolved ratio gives the rows for 80 % "
            f"power at the Bonferroni level 5 %/{len(tests)} and this spread.\n")
    return "\n".join(lines) + "\n" + note


FLAT_SMOOTH = REPORTS["fig1a"][1]["smooth"]     # the tables' smoothing (trailing mean, K = 2)


def check_flat(paths: list[str], smooth: int = FLAT_SMOOTH) -> int:
    """The share the seed-mean val/loss improves over its last 20 % of steps, on the curve
    smoothed as in the tables (trailing mean over ``smooth`` evaluation points)."""
    runs = rp.load_runs(paths)
    curves = [c for c in (r.curve("val/loss") for r in runs) if c is not None]
    s, m, _, _ = rp.seed_average(curves, smooth)
    imp = rp.last_fraction_improvement(s, m, 0.2)
    ok = imp is not None and imp < 0.02
    print(f"{len(curves)} run(s): val/loss (trailing mean over K={smooth} points) improves "
          f"{'n/a' if imp is None else f'{100 * imp:.2f}%'} over the last 20% of steps "
          f"({'flat' if ok else 'NOT flat: raise trainer.max_steps'}; criterion < 2%)")
    return 0 if ok else 1


# differences between two non-baseline labels that the verdicts quote (paired by seed):
# (block, what, runs of the first label, runs of the second, equivalence claim), globs under
# the runs root
CONTRASTS = [
    ("appA1", "global n = 768 − global n = 32", f"{FIG1A}/scope=global{SEEDS3}",
     "appA1_block_size/block_size=32_seed=*", False),
    ("appC2", "embedding output-wise − embedding layer-wise",
     "appC2_arch_aware/only=-embedding-outputwise-_seed=*",
     "appC2_arch_aware/only=-embedding-layerwise-_seed=*", False),
    # arXiv App. C.2: output-wise rotation of value "does not improve the performance"
    ("appC2", "value output-wise − value layer-wise",
     "appC2_arch_aware/only=-value-outputwise-_seed=*",
     "appC2_arch_aware/only=-value-layerwise-_seed=*", True),
    # the ViT table tests top-1 accuracy; verdict 2 also reads the validation loss
    ("fig1b", "global − none, final val loss", "fig1b_vit_scopes/scope=global_seed=*",
     "fig1b_vit_scopes/scope=none_seed=*", False),
]


def contrasts(runs: Path) -> None:
    """Add the :data:`CONTRASTS` (final val/loss, paired over the seeds both have) to the
    catalogue's family."""
    for where, what, a, b, claim in CONTRASTS:
        fin = []
        for pat in (a, b):
            dirs = sorted(x for x in runs.glob(pat) if x.is_dir())
            fin.append({_seed_of(d): c[1][-1] for d in dirs
                        if (c := rp.RunData(d.name, {}, rp.read_scalars(d)).curve("val/loss"))
                        is not None})
        common = sorted(set(fin[0]) & set(fin[1]))
        if len(common) < 2:
            continue
        x, y = [float(fin[0][k]) for k in common], [float(fin[1][k]) for k in common]
        iv = rp.diff_ci(x, y, paired=True)
        register(where, what, Comparison(iv, float(np.std(np.subtract(x, y), ddof=1))),
                 LOSS_MARGIN, claim=claim)


def holm_block(alpha: float = 0.05) -> str:
    """Every difference the other blocks print (each distinct one once), with its two-sided
    p-value, Holm's adjustment over all of them, and the equivalence test where a margin is
    set; the equivalence claims (a paper says "no difference") with their TOST p-values
    adjusted by Holm among themselves: what the verdicts are judged on."""
    if not FAMILY:
        return NOT_RUN
    adj = significance.holm([d["iv"].p for d in FAMILY])
    m = len(FAMILY)
    claims = [d for d in FAMILY if d["claim"]]
    k = len(claims)
    tadj = dict(zip(map(id, claims), significance.holm([d["tost"].p for d in claims])))
    lines = ["| block | difference | seeds | Δ ± 95 % | p | p Holm (all "
             f"{m}) | Δ ≠ 0 after Holm | equivalent within the margin (TOST, unadjusted) | "
             f"equivalence claim: TOST p Holm (all {k}) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d, a in zip(FAMILY, adj):
        iv, cmp = d["iv"], d["cmp"]
        where = ", ".join([d["where"]] + d["also"])
        sig = "yes" if a < alpha else "no" + seeds_text(
            cmp.seeds_for_power(level=1 - alpha / m))
        e = d["tost"]
        eq = "-" if e is None else f"±{d['margin']:g}: " + tost_text(
            e.p, e.equivalent, cmp.seeds_for_equivalence(d["margin"]))
        claim = "-"
        if d["claim"]:
            ta = tadj[id(d)]
            claim = f"{p_text(ta)}: " + ("equivalent" if ta < alpha else "not shown" + seeds_text(
                cmp.seeds_for_equivalence(d["margin"], alpha=alpha / k)))
        lines.append(md_row([where, d["what"], str(iv.n),
                             f"{iv.value:+.4g} ± {iv.half_width:.2g}", p_text(iv.p),
                             p_text(a), sig, eq, claim]))
    return "\n".join(lines) + (
        f"\n\nHolm's step-down adjustment over these {m} differences (family-wise error 5 %); "
        f"the equivalence claims' TOST p-values are adjusted among the {k} claims. Seeds for "
        "80 % power: for \"Δ ≠ 0\", the seeds (per side for Welch) at which a two-sided t test "
        f"at the Bonferroni level 5 %/{m} (what Holm demands of the smallest p, an upper bound "
        "for the others) detects the observed Δ with probability 0.8 at the observed spread "
        "(noncentral t, spread taken as known); for TOST, the seeds at which it shows "
        f"equivalence with probability 0.8 at 5 % (claims: at 5 %/{k}) if the true Δ is the "
        "observed one. Margins are our choice: "
        f"{LOSS_MARGIN:g} nats per byte of loss, {ACC_MARGIN:g} of top-1 accuracy, {CV_MARGIN:g} "
        "in CV. Probe tests over Hessian rows (Table 1, Fig. 8, Fig. 9) are not in the family.\n")


def fill_doc(doc: str, blocks: dict[str, str]) -> str:
    for name, text in blocks.items():
        pat = re.compile(rf"(<!-- generated:{re.escape(name)} -->\n).*?(<!-- end:{re.escape(name)} -->)",
                         re.S)
        doc = pat.sub(lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(2), doc)
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "paper" / "cpu"))
    ap.add_argument("--write-docs", action="store_true", help="update docs/REPRODUCE.md")
    ap.add_argument("--check-flat", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--doc", default=str(DOC), help="the document --write-docs updates")
    ap.add_argument("--figures", default=None,
                    help="where the figures go (default with --write-docs: docs/figures)")
    a = ap.parse_args(argv)
    if a.check_flat:
        return check_flat(a.check_flat)
    runs = Path(a.runs)
    figures = Path(a.figures) if a.figures else (FIG if a.write_docs else None)
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
    doc_dir = Path(a.doc).resolve().parent
    FAMILY.clear()
    blocks = {name: report(name, runs, figures, doc_dir) for name in REPORTS}
    blocks.update(fig6=fig6(runs), appA4_distance=appA4(runs), probes=probes(runs), fig7=fig7(runs),
                  fig9=fig9(runs), orth=orth(runs))
    contrasts(runs)
    blocks["holm"] = holm_block()
    md = "\n".join(f"## {k}\n\n{v}" for k, v in blocks.items())
    runs.mkdir(parents=True, exist_ok=True)
    atomic_write(runs / "catalogue.md", md)
    print(md)
    if a.write_docs:
        doc = Path(a.doc)
        atomic_write(doc, fill_doc(doc.read_text(encoding="utf-8"), blocks))
        print(f"updated {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
