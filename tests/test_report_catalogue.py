"""The catalogue's evidence tooling on synthetic runs: configs/paper/cpu/summarize.py fills the
generated blocks of docs/REPRODUCE.md from run directories (intervals and seed counts from the
report), checks that a baseline has flattened, and make_og_sweeps.py's seeds-at-best stage picks
interior best lrs only; run_cpu_twins.sh runs every CPU sweep that is not reported from fig1a."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats as st
import yaml

from test_report import write_run

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


summarize = load(ROOT / "configs/paper/cpu/summarize.py")
og = load(ROOT / "configs/paper/make_og_sweeps.py")


def gpt_config(scope, seed, max_steps=400, **opt):
    return {"seed_everything": seed, "trainer": {"max_steps": max_steps},
            "model": {"class_path": "lightning_modules.gpt.GPTLightningModule",
                      "init_args": {"rotation": {"scope": scope, "only": None, "block_size": 768},
                                    "optimizer": {"class_path": opt.pop("cls", "torch.optim.AdamW"),
                                                  "init_args": {"lr": opt.pop("lr", 3e-3),
                                                                **opt}}}}}


FINAL = {"none": 2.0, "outputwise": 2.0, "global": 2.5, "svd": 1.875}
OFFSET = {0: -0.125, 1: 0.0, 2: 0.125}


def fig1a_runs(root: Path) -> None:
    for scope, f in FINAL.items():
        for seed, off in OFFSET.items():
            v = f + off
            write_run(root / "fig1a_gpt2_scopes" / f"scope={scope}_seed={seed}",
                      gpt_config(scope, seed),
                      {"val/loss": [(99, v + 1.0), (199, v + 0.5), (299, v + 0.0078125), (399, v)],
                       "train/loss": [(s, v) for s in range(9, 400, 10)]})


def test_summarize_fills_the_generated_blocks_from_runs(tmp_path):
    runs = tmp_path / "runs"
    fig1a_runs(runs)
    doc = tmp_path / "REPRODUCE.md"
    doc.write_text("# x\n<!-- generated:fig1a -->\nold\n<!-- end:fig1a -->\n"
                   "<!-- generated:muon -->\nold\n<!-- end:muon -->\nkept\n")
    assert summarize.main(["--runs", str(runs), "--write-docs", "--doc", str(doc),
                           "--figures", str(tmp_path / "figures")]) == 0
    text = doc.read_text()
    half = st.t.ppf(0.975, 2) * st.sem([1.875, 2.0, 2.125])
    # per scope: 3 seeds, mean ± 95 % t half-width; global - none paired by seed: +0.5, no spread
    assert f"| scope=none | 3 | 2.0000 ± {half:.4f} | 2.0000 ± {half:.4f} |" in text
    assert "| scope=global | 3 |" in text and "| +0.5000 ± 0.0000 | <1e-4 (<1e-4) | yes |" in text
    # the equivalence column with the loss margin (our choice): output-wise = none exactly
    assert f"| equivalent within ±{summarize.LOSS_MARGIN:g} (TOST) |" in text
    assert "| +0.0000 ± 0.0000 | 1 (1) | no | yes (p <1e-4) |" in text.split("scope=outputwise")[1]
    # every difference once in the catalogue-wide Holm block: fig5 repeats fig1a's runs
    holm = text.split("<!-- generated:holm -->")[1] if "generated:holm" in text else \
        (runs / "catalogue.md").read_text().split("## holm")[1]
    assert "| fig1a, fig5 | scope=global − scope=none | 3 |" in holm
    assert "![fig1a](figures/full_fig1a.png)" in text and (tmp_path / "figures/full_fig1a.png").exists()
    assert "<!-- generated:muon -->\n_not run yet" in text and text.endswith("kept\n")
    assert "old" not in text
    cat = (runs / "catalogue.md").read_text()
    assert "## fig5" in cat and "| scope=svd | 3 |" in cat.split("## fig5")[1]
    assert "## appA1\n\n_not run yet" in cat            # appA1_block_size has no runs


def test_check_flat(tmp_path, capsys):
    """The pilot's check reads the curve smoothed as the tables do (trailing mean, K = 2)."""
    assert summarize.FLAT_SMOOTH == 2
    write_run(tmp_path / "flat", gpt_config("none", 0),
              {"val/loss": [(99, 3.0), (199, 2.01), (299, 2.005), (399, 2.0)]})
    # K = 2: 2.0075 at 299 -> 2.0025 at 399 improves 0.25 % (flat); unsmoothed it would too
    assert summarize.main(["--check-flat", str(tmp_path / "flat")]) == 0
    assert "K=2" in capsys.readouterr().out
    # flat unsmoothed (2.0078 -> 2.0, 0.4 %) but not with K = 2 (2.254 -> 2.004, 11 %)
    fig1a_runs(tmp_path)
    d = tmp_path / "fig1a_gpt2_scopes"
    assert summarize.main(["--check-flat", str(d / "scope=none_seed=0")]) == 1
    write_run(tmp_path / "steep", gpt_config("none", 0),
              {"val/loss": [(99, 4.0), (199, 3.0), (299, 2.5), (399, 2.0)]})
    assert summarize.main(["--check-flat", str(tmp_path / "steep")]) == 1
    assert "NOT flat" in capsys.readouterr().out


def og_runs(root: Path, finals: dict[str, list[float]]) -> None:
    for tag, vals in finals.items():
        cls, args, _ = og.OPTIMIZERS[tag]
        for lr, v in zip(og.CPU_LRS[tag], vals):
            write_run(root / "og_optimizers" / f"{tag}_lr={lr:g}_seed=0",
                      gpt_config("none", 0, cls=cls, lr=lr, **args),
                      {"val/loss": [(150, v + 1), (300, v)]})


def test_seeds_at_best_interior_and_edge(tmp_path, capsys):
    base = [3.0, 2.5, 2.25, 2.75, math.nan]              # best: the 3rd lr; NaN (diverged) worst

    def interior(t):                                      # grids of 6 points get one more
        return (base + [3.5] * len(og.CPU_LRS[t]))[:len(og.CPU_LRS[t])]
    og_runs(tmp_path, {t: interior(t) for t in og.OPTIMIZERS})
    out = og.seeds_at_best("og_optimizers", tmp_path)
    spec = yaml.safe_load(out.read_text())
    assert spec["out_dir"] == "runs/paper/cpu/og_optimizers_seeds"
    got = {(r["name"], r["seed_everything"]) for r in spec["runs"]}
    want = {(f"{t}_lr={og.CPU_LRS[t][2]:g}_seed={s}", s) for t in og.OPTIMIZERS for s in (1, 2)}
    assert got == want
    r0 = spec["runs"][0]
    assert r0["model.init_args.optimizer"]["init_args"]["lr"] * r0["model.init_args.min_lr_ratio"] \
        == pytest.approx(1e-5, rel=1e-4)
    # an edge optimum is refused, naming the lr to add
    edge = tmp_path / "edge"
    og_runs(edge, {t: interior(t) for t in og.OPTIMIZERS} | {"adam": [2.0, 2.5, 2.6, 2.7, 2.8]})
    with pytest.raises(SystemExit) as e:
        og.seeds_at_best("og_optimizers", edge)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "adam: best lr 0.000316 is at the edge" in err and "add 0.0001" in err


def test_cpu_grids_are_half_decade_and_five_points():
    for grids in (og.CPU_LRS, og.CPU_ONE_BETA_LRS):
        for tag, lrs in grids.items():
            assert len(lrs) >= 5, tag
            for a, b in zip(lrs, lrs[1:]):
                assert b / a == pytest.approx(math.sqrt(10), rel=2e-3), (tag, lrs)


def test_full_tier_runs_every_cpu_sweep():
    script = (ROOT / "configs/paper/run_cpu_twins.sh").read_text()
    reported_from_fig1a = {"fig5_svd", "fig6_second_moments"}
    for p in sorted((ROOT / "configs/paper/cpu").glob("*.sweep.yaml")):
        name = p.name[: -len(".sweep.yaml")]
        assert name in reported_from_fig1a or f"configs/paper/cpu/{p.name}" in script, name
    for p in (ROOT / "configs/paper/cpu").glob("*.sweep.yaml"):
        seeds = yaml.safe_load(p.read_text()).get("grid", {}).get("seed_everything")
        runs = yaml.safe_load(p.read_text()).get("runs") or []
        n = len(seeds) if seeds else len({r.get("seed_everything") for r in runs})
        if p.name.startswith("og_"):
            continue                    # seed 0 grid; 3 seeds at the best lr (seeds_at_best)
        assert n >= (5 if p.name.startswith(("fig1a", "fig5", "fig6")) else 3), p.name


def probe_json(l1s, other, seed=0):
    """A probe.json as adamrot probe writes it (its own interval functions)."""
    from adamrot.probe.summary import one_one_summary, table1_intervals

    rows = []
    for i, (l1, o) in enumerate(zip(l1s, other)):
        rows.append({"l1": l1, "ptype": "mlp_in" if i % 2 else "query",
                     "blocks": {b: {"mean_abs": l1 / 10} for b in ("neuron", "layer", "other")},
                     "contributions": {
                         "update": {"neuron": 0.01, "layer": -0.01, "other": o, "total": o},
                         "random": {"neuron": [0.01, -0.01], "layer": [0.02, -0.02],
                                    "other": [o, o / 2], "total": [o, o / 2]}}})
    return {"gradient_bound": {"value": 0.25}, "one_one_norm": one_one_summary(rows),
            "hessian": {"rows": rows, "intervals": table1_intervals(rows)}}


def test_summarize_probes_use_the_probes_intervals(tmp_path):
    import json

    from adamrot.probe.summary import compare_one_one

    runs = tmp_path / "runs"
    res = {"none": probe_json([1.0, 1.5, 2.0, 2.5], [0.5, 0.75, 1.0, 1.25]),
           "global": probe_json([3.0, 3.5, 4.0, 4.5], [0.25, 0.5, 0.75, 1.0])}
    for s, d in res.items():
        p = runs / "fig1a_gpt2_scopes" / f"scope={s}_seed=0" / "probe" / "probe.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(d))
    text = summarize.probes(runs)
    oo = res["none"]["one_one_norm"]
    assert oo["rows"] == 4 and oo["half_width"] > 0
    assert f"| none | 0.250 | 4 | {oo['estimate']:.3g} ± {oo['half_width']:.1e} | - |" in text
    c = compare_one_one(res["global"], res["none"])
    assert c["mean"] == 2.0 and c["excludes"] is True
    assert f"| global | 0.250 | 4 | 3.75 ± " in text and \
        f"{c['mean']:.2e} ± {c['half_width']:.1e} (excludes 0: yes)" in text
    upd = res["none"]["hessian"]["intervals"]["update"]
    assert upd["verdict"] in text.split("| none |")[1].split("\n")[0]


def test_og_ranking_at_best_lr_with_intervals(tmp_path):
    """Seed 0 on the grid plus seeds 1, 2 at the best lr: the ranking lists the 3-seed labels,
    best first, with paired differences to the best."""
    runs = tmp_path / "runs"
    best = {"adam": (2, 2.25), "rmsprop": (2, 2.5)}      # (index of the best lr, final loss)
    for tag, (ib, v) in best.items():
        cls, args, _ = og.OPTIMIZERS[tag]
        for i, lr in enumerate(og.CPU_LRS[tag]):
            seeds = (0, 1, 2) if i == ib else (0,)
            for seed in seeds:
                sub = "og_optimizers" if seed == 0 else "og_optimizers_seeds"
                f = (v if i == ib else v + 0.5) + {0: -0.125, 1: 0.0, 2: 0.125}[seed]
                write_run(runs / sub / f"{tag}_lr={lr:g}_seed={seed}",
                          gpt_config("none", seed, cls=cls, lr=lr, **args), {"val/loss": [(300, f)]})
    text = summarize.report("og_optimizers", runs, None, tmp_path)
    rank = text.split("| rank |")[1]
    half = st.t.ppf(0.975, 2) * st.sem([2.125, 2.25, 2.375])
    lines = [x for x in rank.splitlines() if x.startswith("| 1 ") or x.startswith("| 2 ")]
    assert "betas=[0.95,0.95]" in lines[0] and f"| 3 | 2.2500 ± {half:.4f} |" in lines[0]
    assert "betas=[0.0,0.95]" in lines[1] and "| +0.2500 ± 0.0000 | <1e-4 | yes |" in lines[1]
    assert lines[1].endswith("| no (p 1; Δ outside the margin) |")    # 0.25 > 0.02
    # the paper's pairwise claim Adam (0.95, 0.95) better than RMSprop, paired by seed
    assert "| Adam (0.95, 0.95) − RMSprop | -0.2500 ± 0.0000 | <1e-4 |" in text
    assert "signSGD − SGD-M" not in text                               # not run here
    assert "not interior" not in text.split("| optimizer | setting |")[1].split("| rank |")[0]


def test_fig1a_run_names_match_what_the_tables_read():
    """summarize.py, probes.yaml and run_cpu_twins.sh address fig1a runs as scope=S_seed=N."""
    from adamrot import sweep

    spec = sweep.load_spec(str(ROOT / "configs/paper/cpu/fig1a_gpt2_scopes.sweep.yaml"))
    names = {r.name for r in sweep.expand_runs(spec)}
    assert names == {f"scope={s}_seed={n}" for s in
                     ("none", "outputwise", "inputwise", "layerwise", "global", "svd")
                     for n in range(5)}
    cpu = yaml.safe_load((ROOT / "configs/paper/probes.yaml").read_text())["cpu"]
    for e in cpu["experiments"].values():
        assert set(e["runs"]) <= names


def test_reproduce_md_blocks_are_all_generated(tmp_path):
    """Every generated block of docs/REPRODUCE.md is one summarize.py writes; with no runs every
    block is rewritten to "not run yet" and nothing outside the blocks changes."""
    import re

    doc = (ROOT / "docs/REPRODUCE.md").read_text()
    names = re.findall(r"<!-- generated:(\w+) -->", doc)
    assert sorted(names) == sorted(set(names)) and len(names) == 19
    copy = tmp_path / "REPRODUCE.md"
    copy.write_text(doc)
    assert summarize.main(["--runs", str(tmp_path / "none"), "--write-docs", "--doc", str(copy),
                           "--figures", str(tmp_path / "f")]) == 0
    block = re.compile(r"(<!-- generated:(\w+) -->\n)(.*?)(<!-- end:\2 -->)", re.S)
    rewritten = copy.read_text()
    assert block.sub(r"\1\4", rewritten) == block.sub(r"\1\4", doc)
    bodies = [m.group(3) for m in block.finditer(rewritten)]
    assert len(bodies) == 19 and all(b.startswith("_not run yet") for b in bodies)
    cat = (tmp_path / "none" / "catalogue.md").read_text()
    assert sorted(re.findall(r"^## (\w+)$", cat, re.M)) == sorted(names)


def test_fig9_tests_the_block_order_row_by_row(tmp_path):
    """Per type: the paired log10 ratios of the blocks' mean |H_ij| within each row, with a
    verdict on "same neuron > same layer > other layers"; a straddling ratio names rows needed."""
    import json

    def row(t, neuron, layer, other):
        return {"ptype": t, "blocks": {"neuron": {"mean_abs": neuron}, "layer": {"mean_abs": layer},
                                       "other": {"mean_abs": other}}}

    rows = ([row("mlp_in", 100.0 * k, 10.0 * k, 20.0 * k) for k in (1.0, 2.0, 4.0)]      # layer < other
            + [row("value", 10.0, 1.0, o) for o in (0.5, 2.0, 0.9, 1.2)])                 # straddles
    p = tmp_path / "fig1a_gpt2_scopes" / "scope=none_seed=0" / "probe_types" / "probe.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"hessian": {"rows": rows}}))
    text = summarize.fig9(tmp_path)
    mlp = next(line for line in text.splitlines() if line.startswith("| none | mlp_in |"))
    # every row has neuron/layer = 10 and layer/other = 1/2 exactly: zero spread, both resolved
    assert "| +1.00 ± 0.00 | larger (p Holm <1e-4) | -0.30 ± 0.00 | **smaller** (p Holm <1e-4) |" in mlp
    value = next(line for line in text.splitlines() if line.startswith("| none | value |"))
    lr = [math.log10(1 / o) for o in (0.5, 2.0, 0.9, 1.2)]
    m, h = sum(lr) / 4, st.t.ppf(0.975, 3) * st.sem(lr)
    # four ratio tests in the table: value's layer/other is the largest p, Holm keeps it
    p = 2 * st.t.sf(abs(m) / st.sem(lr), 3)
    assert f"| {m:+.2f} ± {h:.2f} | unresolved (p Holm {p:.2g}; " in value
    assert value.endswith("rows for 80 % power) |") and "Holm's adjustment over the 4 ratio" in text
    assert "| none | value | 4 |" in value


def test_fig7_bound_over_seeds_with_paired_difference(tmp_path):
    """Seed 0's bound comes from the Fig. 8 probe, the other seeds' from probe_linf; Δ vs none
    is paired by seed."""
    import json

    bounds = {"none": [1.0, 1.25, 0.75], "global": [0.01, 0.02, 0.03]}
    for s, bs in bounds.items():
        for seed, b in enumerate(bs):
            p = (tmp_path / "fig1a_gpt2_scopes" / f"scope={s}_seed={seed}"
                 / ("probe" if seed == 0 else "probe_linf") / "probe.json")
            p.parent.mkdir(parents=True)
            p.write_text(json.dumps({"gradient_bound": {"value": b}}))
    text = summarize.fig7(tmp_path)
    h = st.t.ppf(0.975, 2) * st.sem(bounds["none"])
    assert f"| none | 3 | 1 ± {h:.2g} | - | - |" in text
    d = [g - n for g, n in zip(bounds["global"], bounds["none"])]
    hd = st.t.ppf(0.975, 2) * st.sem(d)
    p = 2 * st.t.sf(abs(sum(d) / 3) / st.sem(d), 2)
    assert f"| global | 3 | 0.02 ± " in text and f"| {sum(d) / 3:+.3g} ± {hd:.2g} | {p:.2g} | yes |" in text
    assert summarize.fig7(tmp_path / "nothing").startswith("_not run yet")


def test_orth_mean_cv_per_seed_and_paired_difference(tmp_path):
    cv = {"none": [1.5, 1.75, 1.25], "svd": [0.75, 1.0, 0.5]}      # svd - none = -0.75 every seed
    for s, vs in cv.items():
        for seed, v in enumerate(vs):
            write_run(tmp_path / "neurips_update_orth" / f"scope={s}_seed={seed}", gpt_config(s, seed),
                      {"orth/cv/all": [(2001, v - 0.25), (2002, v + 0.25)]})
    text = summarize.orth(tmp_path)
    h = st.t.ppf(0.975, 2) * st.sem(cv["none"])
    assert f"| none | 3 | 1.5 ± {h:.2g} | - | - |" in text
    assert "| svd | 3 | 0.75 ± " in text and "| -0.75 ± 0 | <1e-4 | yes |" in text


def test_seed_table_names_the_seeds_an_unresolved_difference_needs():
    vals = {"none": {0: 1.0, 1: 2.0, 2: 3.0}, "svd": {0: 1.5, 1: 1.5, 2: 3.5}}   # Δ = .5, -.5, .5
    text = summarize._seed_table(["| h |"], vals)
    d = [0.5, -0.5, 0.5]
    # 80 % power of the two-sided paired t test at effect size mean/sd, by noncentral t
    es = (sum(d) / 3) / st.tstd(d)
    power = lambda n: (st.nct.sf(st.t.ppf(0.975, n - 1), n - 1, es * n ** 0.5)  # noqa: E731
                       + st.nct.cdf(-st.t.ppf(0.975, n - 1), n - 1, es * n ** 0.5))
    n = next(k for k in range(2, 1000) if power(k) >= 0.8)
    assert n > 3 and f"| no ({n} seeds for 80 % power) |" in text


def test_contrasts_join_the_catalogue_family_paired_by_seed(tmp_path):
    """The differences between two rotated settings that the verdicts quote are computed from
    the runs (final val/loss paired by seed) and enter the Holm family."""
    g = {0: 1.9, 1: 2.0, 2: 2.2}
    n32 = {0: 1.8, 1: 1.85, 2: 2.0}                                 # Δ = .1, .15, .2
    for seed in g:
        write_run(tmp_path / "fig1a_gpt2_scopes" / f"scope=global_seed={seed}",
                  gpt_config("global", seed), {"val/loss": [(100, 3.0), (200, g[seed])]})
        write_run(tmp_path / "appA1_block_size" / f"block_size=32_seed={seed}",
                  gpt_config("global", seed), {"val/loss": [(100, 3.0), (200, n32[seed])]})
    summarize.FAMILY.clear()
    summarize.contrasts(tmp_path)
    assert len(summarize.FAMILY) == 1                                # appC2 has no runs here
    d = summarize.FAMILY[0]
    assert (d["where"], d["what"]) == ("appA1", "global n = 768 − global n = 32")
    want = st.ttest_rel([g[k] for k in g], [n32[k] for k in g])
    assert d["iv"].value == pytest.approx(0.15, abs=1e-6)
    assert d["iv"].p == pytest.approx(want.pvalue, rel=1e-5)
    block = summarize.holm_block()
    assert "| appA1 | global n = 768 − global n = 32 | 3 | +0.15 ± " in block
    summarize.FAMILY.clear()


def test_holm_block_adjusts_differences_and_equivalence_claims_separately():
    """Holm over every registered difference; the TOST p-values of the equivalence claims
    (a paper says "no difference") adjusted among the claims only."""
    from adamrot.report import stats
    from adamrot.report.tables import Comparison

    def cmp(d):
        iv = stats.diff_ci(d, [0.0] * len(d), paired=True)
        return Comparison(iv, float(st.tstd(d)))
    diffs = {"a": [0.30, 0.32, 0.35], "b": [0.005, -0.004, 0.002], "c": [0.01, -0.012, 0.004]}
    summarize.FAMILY.clear()
    for name, d in diffs.items():
        summarize.register("x", name, cmp(d), 0.02, claim=name != "a")
    summarize.register("y", "a again", cmp(diffs["a"]), 0.02, key=("x", "a"))   # same runs
    text = summarize.holm_block()
    summarize.FAMILY.clear()
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| x")}
    assert set(rows) == {"a", "b", "c"} and rows["a"].startswith("| x, y | a |")
    p = {n: 2 * st.t.sf(abs(np.mean(d)) / st.sem(d), 2) for n, d in diffs.items()}
    order = sorted(p, key=p.get)
    adj, run = {}, 0.0
    for j, n in enumerate(order):
        run = max(run, min(1.0, (3 - j) * p[n]))
        adj[n] = run
    for n in diffs:
        assert f"| {summarize.p_text(adj[n])} | " in rows[n]
    tp = {}
    for n in ("b", "c"):
        d, se = np.mean(diffs[n]), st.sem(diffs[n])
        tp[n] = max(st.t.sf((d + 0.02) / se, 2), st.t.sf((0.02 - d) / se, 2))
    lo, hi = sorted(tp, key=tp.get)
    tadj = {lo: min(1.0, 2 * tp[lo]), hi: max(min(1.0, 2 * tp[lo]), tp[hi])}
    for n in ("b", "c"):
        assert rows[n].split(" | ")[-1].startswith(summarize.p_text(tadj[n]) + ": ")
    assert rows["a"].endswith("| - |")                               # not a claim
    assert "adjusted among the 2 claims" in text and "over these 3 differences" in text
