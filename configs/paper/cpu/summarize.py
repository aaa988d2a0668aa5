"""Figures and numbers of the CPU twins for docs/REPRODUCE.md.

Reads runs/paper/cpu/ (written by configs/paper/run_cpu_twins.sh), writes small PNGs to
docs/figures/ and the numbers to runs/paper/cpu/summary.md / summary.json. Whatever has not
been run is reported as "not run".

    .venv/bin/python configs/paper/cpu/summarize.py

Numbers: final val loss = last validation of the run; "slowdown (train)" = the report's
slowdown definition applied to the train loss (logged every 10 steps, trailing mean over 5
points) instead of the validation loss (6 evaluations on a 300-step run are too coarse):
steps the run needs to first reach the baseline's final smoothed train loss / the
baseline's steps - 1.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
R = ROOT / "runs" / "paper" / "cpu"
SCOPES = ("none", "outputwise", "inputwise", "layerwise", "global", "svd")
FIG = ROOT / "docs" / "figures"
OUT: dict = {}


def acc(d: Path) -> EventAccumulator | None:
    if not d.is_dir() or not list(d.glob("events.out.tfevents.*")):
        return None
    a = EventAccumulator(str(d), size_guidance={"scalars": 0, "histograms": 0})
    a.Reload()
    return a


def scal(d: Path, tag: str) -> list[tuple[int, float]]:
    a = acc(d)
    if a is None or tag not in a.Tags()["scalars"]:
        return []
    pts = {}
    for e in a.Scalars(tag):
        pts[e.step] = e.value
    return sorted(pts.items())


def smooth(pts, k=5):
    out = []
    for i, (s, _) in enumerate(pts):
        w = [v for _, v in pts[max(0, i - k + 1): i + 1]]
        out.append((s, sum(w) / len(w)))
    return out


def slowdown(base: Path, run: Path, tag="train/loss", k=5):
    b, r = smooth(scal(base, tag), k), smooth(scal(run, tag), k)
    if not b or not r:
        return None
    target = b[-1][1]
    sb = next(s for s, v in b if v <= target)
    sr = next((s for s, v in r if v <= target), None)
    if sr is None:
        return "never reached"
    return f"{100 * (sr / sb - 1):+.0f}%"


def eq_slowdown(base: Path, run: Path, tag="train/loss", k=5):
    """T / (first step at which the baseline reached this run's final smoothed loss) - 1,
    T = this run's last step: how many times more steps the run took to get where it is."""
    b, r = smooth(scal(base, tag), k), smooth(scal(run, tag), k)
    if not b or not r:
        return None
    target, T = r[-1][1], r[-1][0]
    sb = next((s for s, v in b if v <= target), None)
    if sb is None:
        return "better than baseline"
    return f"{100 * (T / sb - 1):+.0f}%"


def final(d: Path, tag="val/loss"):
    p = scal(d, tag)
    return p[-1][1] if p else None


def fmt(x, nd=3):
    return "not run" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def shrink(src: Path, dst: Path, width=900):
    try:
        from PIL import Image
        im = Image.open(src)
        if im.width > width:
            im = im.resize((width, int(im.height * width / im.width)))
        im = im.convert("P", palette=Image.ADAPTIVE, colors=128)
        im.save(dst, optimize=True)
    except Exception:
        shutil.copy(src, dst)


def report(name: str, paths: list[Path], *extra: str):
    paths = [p for p in paths if p.exists()]
    if not paths:
        return None
    from adamrot import report as rep
    out = R / "reports" / name
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = rep.main([*map(str, paths), "--out", str(out), *extra])
    png = out / "loss_curves.png"
    if rc == 0 and png.exists():
        shrink(png, FIG / f"{name}.png")
    return out


def table(name, base: Path, runs: dict[str, Path], tag="val/loss"):
    rows = {}
    for label, d in runs.items():
        rows[label] = {"final_" + tag.split("/")[-1]: final(d, tag),
                       "slowdown_train": slowdown(base, d) if d != base else "baseline",
                       "eq_slowdown_train": eq_slowdown(base, d) if d != base else "baseline"}
    OUT[name] = rows
    return rows


def main():
    FIG.mkdir(parents=True, exist_ok=True)
    f1 = R / "fig1a_gpt2_scopes"
    sc = {s: f1 / f"scope={s}" for s in ["none", "outputwise", "inputwise", "layerwise", "global", "svd"]}
    table("fig1a", sc["none"], sc)
    report("fig1a_gpt2_scopes", [f1], "--smooth", "2", "--train-smooth", "5", "--label-keys", "scope")
    report("fig5_svd", [sc[s] for s in ("none", "outputwise", "global", "svd")], "--smooth", "2",
           "--train-smooth", "5", "--label-keys", "scope")

    # Fig. 6: log10 v histograms, none vs global
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=90)
    stats = {}
    for s in ("none", "global"):
        a = acc(sc[s])
        tag = "second_moment/log10_v/all"
        if a is None or tag not in a.Tags().get("histograms", []):
            continue
        h = a.Histograms(tag)[-1]
        hv = h.histogram_value
        mean = hv.sum / hv.num
        sd = math.sqrt(max(0.0, hv.sum_squares / hv.num - mean ** 2))
        stats[s] = {"step": h.step, "mean_log10_v": mean, "sd_log10_v": sd}
        lims = list(hv.bucket_limit)
        cnt = list(hv.bucket)
        tot = sum(cnt)
        ax.step(lims, [c / tot for c in cnt], where="pre", label=f"{s} (sd {sd:.2f})")
    if stats:
        ax.set_xlabel("log10 v (Adam second moment, rotated coordinates)")
        ax.set_ylabel("fraction")
        ax.set_xlim(-16, -2)
        ax.legend()
        ax.set_title("Fig. 6 CPU twin: second moments at the last step")
        fig.tight_layout()
        fig.savefig(FIG / "fig6_second_moments.png")
    plt.close(fig)
    OUT["fig6"] = stats

    # probes (Fig. 7, 8, Table 1) and per-type rows (Fig. 9)
    pr = {}
    for s in ("none", "outputwise", "global", "svd"):
        p = sc[s] / "probe" / "probe.json"
        if p.exists():
            d = json.loads(p.read_text())
            h = (d.get("hessian") or {}).get("summary", {}).get("all", {})
            pr[s] = {"linf": d["gradient_bound"]["value"],
                     "one_one": (d.get("one_one_norm") or {}).get("estimate"),
                     "one_one_se": (d.get("one_one_norm") or {}).get("stderr"),
                     "one_one_cauchy": (d.get("one_one_norm_cauchy") or {}).get("estimate"),
                     **{f"{b}_{k}": h.get(b, {}).get(k) for b in ("neuron", "layer", "other")
                        for k in ("mean_abs_value", "random_mean", "update_mean", "l1_share")}}
    OUT["probes"] = pr
    if pr:
        fig, axs = plt.subplots(1, 2, figsize=(7, 2.8), dpi=90)
        names = list(pr)
        axs[0].bar(names, [pr[n]["linf"] for n in names])
        axs[0].set_title("Fig. 7: max ||R g_B||_inf")
        axs[1].bar(names, [pr[n]["one_one"] or 0 for n in names],
                   yerr=[pr[n]["one_one_se"] or 0 for n in names])
        axs[1].set_title("Fig. 8: ||H||_(1,1)/d (sampled rows)")
        fig.tight_layout()
        fig.savefig(FIG / "fig7_fig8_probes.png")
        plt.close(fig)
    types = {}
    for s in ("none", "global"):
        p = sc[s] / "probe_types" / "probe.json"
        if p.exists():
            summ = json.loads(p.read_text())["hessian"]["summary"]
            types[s] = {t: {b: v[b]["mean_abs_value"] for b in ("neuron", "layer", "other")}
                        for t, v in summ.items() if t != "all"}
    OUT["fig9_types"] = types
    if types:
        fig, axs = plt.subplots(1, len(types), figsize=(4.2 * len(types), 3), dpi=90, squeeze=False)
        for ax, (s, tv) in zip(axs[0], types.items()):
            ts = list(tv)
            for j, b in enumerate(("neuron", "layer", "other")):
                ax.bar([i + 0.27 * (j - 1) for i in range(len(ts))], [tv[t][b] for t in ts],
                       width=0.27, label=b)
            ax.set_xticks(range(len(ts)), ts, rotation=45, fontsize=7)
            ax.set_yscale("log")
            ax.set_title(f"Fig. 9 twin, {s}: mean |H_ij| per block")
        axs[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(FIG / "fig9_hessian_rows_types.png")
        plt.close(fig)

    # update orthogonality (resumed)
    orth = {}
    fig, ax = plt.subplots(figsize=(6, 3), dpi=90)
    for s in ("none", "outputwise", "global", "svd"):
        pts = scal(R / "neurips_update_orth" / f"scope={s}", "orth/cv/all")
        if pts:
            orth[s] = {"mean_cv": sum(v for _, v in pts) / len(pts), "steps": len(pts)}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=s)
    OUT["orth"] = orth
    if orth:
        ax.set_xlabel("step (resumed at 300)")
        ax.set_ylabel("CV of singular values of A")
        ax.legend()
        ax.set_title("NeurIPS Sec. 4.2 twin: update orthogonality")
        fig.tight_layout()
        fig.savefig(FIG / "neurips_update_orth.png")
    plt.close(fig)

    a1 = R / "appA1_block_size"
    table("appA1", sc["none"], {"n=4": a1 / "block_size=4", "n=32": a1 / "block_size=32",
                                "n=768 (fig1a global)": sc["global"]})
    report("appA1_block_size", [sc["none"], sc["global"], a1], "--smooth", "2", "--train-smooth", "5",
           "--label-keys", "scope,rotation.block_size")

    a4 = R / "appA4_sgd_flash"
    base = scal(a4 / "sgd_none_math", "train/loss")
    a4o = {}
    for n in ("sgd_global_math", "sgd_global_flash"):
        o = dict(scal(a4 / n, "train/loss"))
        common = [(s, v) for s, v in base if s in o]
        if common:
            a4o[n] = {"max_abs_train_loss_diff": max(abs(v - o[s]) for s, v in common),
                      "final_val_loss": final(a4 / n)}
    a4o["sgd_none_math"] = {"final_val_loss": final(a4 / "sgd_none_math")}
    OUT["appA4"] = a4o
    report("appA4_sgd_flash", [a4], "--train-smooth", "1", "--label-keys", "scope,attention")

    c2 = R / "appC2_arch_aware"
    table("appC2", sc["none"], {"none": sc["none"], **{n: c2 / n for n in
          ("embedding_layerwise", "query_layerwise", "key_layerwise", "value_layerwise",
           "attn_out_layerwise", "mlp_in_layerwise", "mlp_out_layerwise",
           "layernorm_layerwise", "value_outputwise", "embedding_outputwise")
          if (c2 / n).exists()},
          "all layerwise (fig1a)": sc["layerwise"]})
    report("appC2_arch_aware", [sc["none"], c2], "--smooth", "2", "--train-smooth", "5",
           "--label-keys", "only")

    table("svd_refresh", sc["none"], {"F=20 (fig1a svd)": sc["svd"],
                                      "F=25": R / "svd_refresh" / "run"})

    b2 = R / "appB2_beta2"
    rows = {}
    for b in ("0.9-0.9", "0.9-0.99"):
        n, g = b2 / f"betas=-{b}-_scope=none", b2 / f"betas=-{b}-_scope=global"
        rows[f"beta2={b.split('-')[1]}"] = {"val_none": final(n), "val_global": final(g),
                                            "slowdown_train_global": slowdown(n, g),
                                            "eq_slowdown_global": eq_slowdown(n, g)}
    rows["beta2=0.95 (fig1a, 300 steps)"] = {"val_none": final(sc["none"]),
                                              "val_global": final(sc["global"]),
                                              "slowdown_train_global": slowdown(sc["none"], sc["global"]),
                                              "eq_slowdown_global": eq_slowdown(sc["none"], sc["global"])}
    OUT["appB2"] = rows
    report("appB2_beta2", [b2], "--smooth", "2", "--train-smooth", "3", "--label-keys", "betas,scope")

    table("muon", sc["none"], {"adam none": sc["none"], "adam svd": sc["svd"],
                               "muon none": R / "muon" / "muon_none"})
    report("muon", [sc["none"], sc["svd"], R / "muon" / "muon_none"], "--smooth", "2",
           "--train-smooth", "5", "--label-keys", "optimizer,scope")

    og = R / "og_optimizers"
    best = {}
    if og.exists():
        for d in sorted(og.iterdir()):
            if not d.is_dir() or d.name.startswith("."):
                continue
            opt, lr = d.name.rsplit("_lr=", 1)
            v = final(d)
            if v is not None and not math.isnan(v):
                best.setdefault(opt, []).append((v, float(lr)))
    OUT["og"] = {o: {"best_val_loss": min(x)[0], "ppl": math.exp(min(x)[0]), "best_lr": min(x)[1],
                     "lrs": sorted(l for _, l in x)} for o, x in best.items()}
    report("og_optimizers", [og], "--smooth", "1", "--train-smooth", "3",
           "--label-keys", "optimizer,lr,betas")
    if OUT["og"]:   # own figure: the best lr of each optimizer (diverged runs would hide the rest)
        fig, axs = plt.subplots(1, 2, figsize=(8, 3), dpi=90)
        for o, r in sorted(OUT["og"].items(), key=lambda kv: kv[1]["best_val_loss"]):
            d = og / f"{o}_lr={r['best_lr']:g}"
            for ax, tag, k in ((axs[0], "train/loss", 3), (axs[1], "val/loss", 1)):
                pts = smooth(scal(d, tag), k)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{o} (lr {r['best_lr']:g})")
        for ax, t in zip(axs, ("train loss (trailing mean of 3 logs)", "validation loss")):
            ax.set_title(t, fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylim(2.3, 4.0)
        axs[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(FIG / "og_optimizers.png")
        plt.close(fig)
    ob = R / "og_one_beta"
    ob_rows = {}
    for d in (sorted(ob.iterdir()) if ob.exists() else []):
        if d.is_dir() and not d.name.startswith("."):
            r = {"final_val_loss": final(d)}
            for t in ("ratio_q05", "ratio_q95", "sigma2_median"):
                a = acc(d)
                tags = [x for x in (a.Tags()["scalars"] if a else []) if x.startswith(f"adam/{t}/")]
                if tags:
                    vals = [scal(d, x)[-1][1] for x in tags]
                    r[t] = sum(vals) / len(vals)
            ob_rows[d.name] = r
    OUT["og_one_beta"] = ob_rows
    report("og_one_beta", [ob], "--smooth", "1", "--train-smooth", "3", "--label-keys", "optimizer")

    vit = R / "fig1b_vit_scopes"
    table("fig1b_vit", vit / "scope=none", {s: vit / f"scope={s}" for s in SCOPES if (vit / f"scope={s}").exists()},
          tag="val/acc1")
    report("fig1b_vit_scopes", [vit], "--metric", "val/acc1", "--label-keys", "scope")
    rn = R / "appC1_resnet50_scopes"
    table("appC1_resnet", rn / "scope=none", {s: rn / f"scope={s}" for s in SCOPES if (rn / f"scope={s}").exists()},
          tag="val/acc1")
    report("appC1_resnet50_scopes", [rn], "--metric", "val/acc1", "--label-keys", "scope")

    (R / "summary.json").write_text(json.dumps(OUT, indent=1, default=str))
    print(json.dumps(OUT, indent=1, default=lambda x: fmt(x)))


if __name__ == "__main__":
    sys.exit(main())
