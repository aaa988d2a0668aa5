"""Tests for adamrot.report on synthetic TensorBoard event files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from adamrot import report as rp

STEPS = [50, 100, 150, 200]

# binary-exact values (event files store float32) so the numbers are exact.
# baseline (scope=none): seed mean val curve [4, 3, 3, 3] -> L* = 3 reached at step 100
# global: seed mean [4, 3.5, 3, 2.75] -> reaches 3 at step 150 -> +50%
# layer (one seed): never gets to 3
VAL = {
    ("none", 0): [4.0, 3.25, 3.25, 3.25],
    ("none", 1): [4.0, 2.75, 2.75, 2.75],
    ("global", 0): [4.0, 3.75, 3.25, 3.0],
    ("global", 1): [4.0, 3.25, 2.75, 2.5],
    ("layer", 0): [4.0, 3.75, 3.5, 3.25],
}
TRAIN_FINAL = {("none", 0): 3.5, ("none", 1): 3.0, ("global", 0): 3.0, ("global", 1): 2.5,
               ("layer", 0): 3.25}
ACC_FINAL = {("none", 0): 0.5, ("none", 1): 0.75, ("global", 0): 0.5, ("global", 1): 0.5,
             ("layer", 0): 0.25}


def config(scope, seed, lr=1.0e-3, opt="torch.optim.AdamW", root="x"):
    return {
        "seed_everything": seed,
        "trainer": {"max_steps": 200, "default_root_dir": root},
        "model": {
            "rotation": {"scope": scope},
            "optimizer": {"class_path": opt, "init_args": {"lr": lr, "weight_decay": 0.1}},
        },
        "ckpt_path": None,
    }


def train_curve(final):
    # 0..200 every 10 steps, ending at `final`
    steps = list(range(0, 201, 10))
    return [(s, final + (200 - s) / 100.0) for s in steps]


def write_run(d: Path, cfg: dict, curves: dict[str, list[tuple[int, float]]]):
    from torch.utils.tensorboard import SummaryWriter

    d.mkdir(parents=True, exist_ok=True)
    w = SummaryWriter(log_dir=str(d))
    for tag, pts in curves.items():
        for s, v in pts:
            w.add_scalar(tag, v, s)
    w.close()
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """A sweep-like dir (index.json) with 5 runs incl. acc1."""
    root = tmp_path_factory.mktemp("sweep")
    entries = []
    for (scope, seed), vals in VAL.items():
        name = f"scope={scope}_seed={seed}"
        write_run(root / name, config(scope, seed, root=str(root / name)), {
            "train/loss": train_curve(TRAIN_FINAL[(scope, seed)]),
            "val/loss": list(zip(STEPS, vals)),
            "val/acc1": [(s, ACC_FINAL[(scope, seed)]) for s in STEPS],
            "train/lr": [(s, 1e-3) for s in STEPS],
        })
        entries.append({"name": name, "status": "finished"})
    entries.append({"name": "never_started", "status": "pending"})
    (root / "index.json").write_text(json.dumps({"sweep": "t", "runs": entries}))
    return root


def read_csv(p: Path) -> list[dict[str, str]]:
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- #
# pure functions
# --------------------------------------------------------------------------- #
T1 = 12.706204736174698          # t_{0.975, 1}: the 95 % interval of two seeds


def half2(a, b):
    """Half-width of the 95 % t interval of the mean of two values."""
    return T1 * np.std([a, b], ddof=1) / math.sqrt(2)


def test_trailing_mean_and_mean_ci():
    assert rp.trailing_mean([4, 3, 2, 1], 1).tolist() == [4, 3, 2, 1]
    assert rp.trailing_mean([4, 3, 2, 1], 2).tolist() == [4, 3.5, 2.5, 1.5]
    assert rp.trailing_mean([4, 3, 2, 1], 3).tolist() == [4, 3.5, 3, 2]
    iv = rp.mean_ci([3.25, 2.75])
    assert (iv.value, iv.n) == (3.0, 2)
    assert iv.half_width == pytest.approx(T1 * 0.25, rel=1e-12)
    one = rp.mean_ci([1.5])
    assert (one.value, one.n, one.half_width) == (1.5, 1, None)


def test_slowdown_pure():
    base = [(np.array(STEPS), np.array(VAL[("none", s)])) for s in (0, 1)]
    rot = [(np.array(STEPS), np.array(VAL[("global", s)])) for s in (0, 1)]
    never = [(np.array(STEPS), np.array(VAL[("layer", 0)]))]
    sd = rp.compute_slowdown(base, rot)
    assert (sd.target, sd.steps_base, sd.steps) == (3.0, 100, 150)
    assert sd.slowdown == 0.5 and sd.text == "+50.0%"
    sd = rp.compute_slowdown(base, never)
    assert sd.steps is None and sd.slowdown is None and sd.text == "never reached"
    assert rp.compute_slowdown(base, base).slowdown == 0.0
    # faster than baseline
    fast = [(np.array(STEPS), np.array([3.0, 2.5, 2.0, 2.0]))]
    assert rp.compute_slowdown(base, fast).text == "-50.0%"
    # smoothing K=2: base smoothed mean [4, 3.5, 3, 3] -> L*=3 at 150;
    # curve [4, 3, 2, 2] smoothed [4, 3.5, 2.5, 2] crosses 3 halfway from 100 to 150: 125
    b2 = [(np.array(STEPS), np.array([4.0, 3.0, 3.0, 3.0]))]
    r2 = [(np.array(STEPS), np.array([4.0, 3.0, 2.0, 2.0]))]
    sd = rp.compute_slowdown(b2, r2, k=2)
    assert (sd.target, sd.steps_base, sd.steps) == (3.0, 150, 125)
    assert sd.slowdown == pytest.approx(125 / 150 - 1, rel=1e-15)
    # higher-is-better metric
    sd = rp.compute_slowdown([(np.array(STEPS), np.array([0.1, 0.5, 0.5, 0.5]))],
                             [(np.array(STEPS), np.array([0.1, 0.2, 0.3, 0.5]))], mode="max")
    assert (sd.steps_base, sd.steps, sd.text) == (100, 200, "+100.0%")


def test_seed_average_common_steps_and_duplicates():
    a = rp.make_run("a", {}, {"val/loss": [(0, 1.0), (10, 2.0), (10, 4.0), (20, 3.0)]})
    assert a.curve("val/loss")[1].tolist() == [1.0, 4.0, 3.0]   # repeated step: last wins
    b = rp.make_run("b", {}, {"val/loss": ([0, 10], [3.0, 2.0])})
    s, m, lo, hi = rp.seed_average([a.curve("val/loss"), b.curve("val/loss")])
    assert s.tolist() == [0, 10] and m.tolist() == [2.0, 3.0]
    assert hi - m == pytest.approx([half2(1, 3), half2(4, 2)], rel=1e-12)
    assert m - lo == pytest.approx(hi - m, rel=1e-12)


def _mem_runs():
    runs = []
    for (scope, seed), vals in VAL.items():
        runs.append(rp.make_run(
            f"scope={scope}_seed={seed}", config(scope, seed, root=f"r/{scope}{seed}"),
            {"train/loss": train_curve(TRAIN_FINAL[(scope, seed)]),
             "val/loss": list(zip(STEPS, vals))}))
    return runs


def test_summarize_in_memory():
    s = rp.summarize(_mem_runs())
    assert s.label_keys == ["model.rotation.scope"]   # seed / root dir excluded
    rows = {r["label"]: r for r in s.rows}
    assert [r["label"] for r in s.rows] == ["scope=none", "scope=global", "scope=layer"]
    assert rows["scope=none"]["n_seeds"] == 2
    assert rows["scope=none"]["final_val_loss_mean"] == 3.0
    assert rows["scope=none"]["final_val_loss_ci95"] == pytest.approx(half2(3.25, 2.75), rel=1e-12)
    assert rows["scope=global"]["final_train_loss_mean"] == 2.75
    assert rows["scope=layer"]["final_val_loss_ci95"] is None       # one seed: no interval
    # global - none, paired by seed: 3.0 - 3.25 = 2.5 - 2.75 = -0.25, no spread
    g = rows["scope=global"]
    assert (g["diff"], g["diff_ci95"], g["diff_method"]) == (-0.25, 0.0, "paired t")
    assert g["diff_excludes_zero"] is True
    assert rows["scope=layer"]["diff"] == 0.25 and rows["scope=layer"]["diff_ci95"] is None
    # zero spread of a paired difference: p = 0; Holm over the two Δ of the table
    assert g["diff_p"] == 0.0 and g["diff_p_holm"] == 0.0 and g["diff_resolved_holm"] is True
    assert rows["scope=layer"]["diff_p"] is None and rows["scope=layer"]["diff_p_holm"] is None
    assert rows["scope=none"]["slowdown"] == "baseline"
    # paired by seed: seed 0's none reaches its L* 3.25 at 100, global at 150 (+50 %); seed 1's
    # 2.75 at 100 and 150 (+50 %): mean +50 %, no spread
    assert g["slowdown_method"] == "paired t"
    assert rows["scope=global"]["slowdown"] == "+50.0%"
    assert rows["scope=global"]["slowdown_pct"] == 50.0
    assert (g["slowdown_lo_pct"], g["slowdown_hi_pct"]) == (50.0, 50.0)
    # both global seeds end below anything their baseline reached: beyond baseline, 2 of 2
    assert g["_eq_text"] == "beyond baseline" and g["eq_beyond_seeds"] == 2
    assert rows["scope=layer"]["slowdown"] == "never reached"
    assert rows["scope=layer"]["slowdown_lo_pct"] is None           # one seed: no interval
    assert rows["scope=layer"]["slowdown_method"] is None
    assert not s.has_acc
    # explicit baseline, various spellings
    for q in ("scope=global", "global", "scope = global"):
        s2 = rp.summarize(_mem_runs(), baseline=q)
        r2 = {r["label"]: r for r in s2.rows}
        assert r2["scope=global"]["slowdown"] == "baseline"
        assert s2.rows[0]["label"] == "scope=global"
        assert r2["scope=none"]["target"] == 2.75
        assert r2["scope=none"]["slowdown"] == "never reached"
    with pytest.raises(rp.ReportError, match="matches no label"):
        rp.summarize(_mem_runs(), baseline="scope=bogus")
    # no scope=none label -> no slowdown
    s3 = rp.summarize([r for r in _mem_runs() if "none" not in r.name])
    assert not s3.has_slowdown and "slowdown" not in s3.columns


def test_auto_label_keys_drop_class_determined_init_args():
    runs = [
        rp.make_run("a", config("none", 0, lr=1e-3, opt="torch.optim.AdamW"), {}),
        rp.make_run("b", config("none", 0, lr=0.1, opt="torch.optim.SGD"), {}),
        rp.make_run("c", config("global", 0, lr=1e-3, opt="torch.optim.AdamW"), {}),
    ]
    assert rp.auto_label_keys(runs) == ["model.rotation.scope", "model.optimizer.class_path"]
    assert rp.resolve_key("optimizer", list(runs[0].config)) == "model.optimizer.class_path"
    assert rp.resolve_key("lr", list(runs[0].config)) == "model.optimizer.init_args.lr"


def test_best_lr_pure_and_partner_baselines():
    finals = {("AdamW", 1e-3): [3.0, 3.5], ("AdamW", 3e-3): [2.5, 3.0], ("AdamW", 1e-2): [4.0, 4.5],
              ("SGD", 0.1): [3.5, 3.5], ("SGD", 0.3): [float("nan"), 3.25]}
    runs = []
    for (opt, lr), vals in finals.items():
        for seed, v in enumerate(vals):
            for scope in ("none", "global"):
                val = v if scope == "none" else v + 0.25
                runs.append(rp.make_run(
                    f"{opt}{lr}{scope}{seed}", config(scope, seed, lr, f"torch.optim.{opt}"),
                    {"val/loss": [(100, val + 1.0), (200, val)]}))
    s = rp.summarize(runs)
    assert s.label_keys == ["model.rotation.scope", "model.optimizer.class_path",
                            "model.optimizer.init_args.lr"]
    # several scope=none labels: each label compared with its own none partner
    r = {x["label"]: x for x in s.rows}
    assert r["scope=global, optimizer=AdamW, lr=0.003"]["baseline"] == \
        "scope=none, optimizer=AdamW, lr=0.003"
    assert r["scope=global, optimizer=AdamW, lr=0.003"]["slowdown"] == "never reached"
    b = rp.best_lr_table(runs, s.label_keys)
    rows = {(x["optimizer"], x["setting"]): x for x in b.rows}
    assert len(rows) == 4
    a = rows[("AdamW", "scope=none")]
    assert (a["best_lr"], a["best_mean"], a["n_seeds"], a["at_edge"]) == (0.003, 2.75, 2, False)
    assert a["best_ci95"] == pytest.approx(half2(2.5, 3.0), rel=1e-12)
    assert a["lrs_tried"] == "0.001;0.003;0.01"
    assert rows[("AdamW", "scope=global")]["best_mean"] == 3.0
    sgd = rows[("SGD", "scope=none")]   # lr 0.3 diverged in one seed (NaN) -> worst
    assert (sgd["best_lr"], sgd["best_mean"], sgd["at_edge"]) == (0.1, 3.5, True)
    assert sgd["extend_with"] == pytest.approx(0.0333, rel=1e-9)   # one grid step (x3) below
    md = rp.best_lr_markdown(b)
    assert "| AdamW | scope=none | 0.003 | 2.7500 ± 3.1766 | 2 | 0.001, 0.003, 0.01 |  |" in md
    assert ("| SGD | scope=none | not interior (0.1 at the edge) | 3.5000 ± 0.0000 | 2 | 0.1, 0.3 "
            "| edge optimum: extend the grid below, e.g. add lr 0.0333 |") in md
    # a setting left with one lr (the others killed or missing) is not called "best"
    one = rp.best_lr_table([x for x in runs if not (x.config["model.optimizer.class_path"]
                                                      == "torch.optim.SGD" and
                                                      x.config["model.optimizer.init_args.lr"]
                                                      == 0.3)], s.label_keys)
    md1 = rp.best_lr_markdown(one)
    assert "| SGD | scope=none | not compared (0.1 only) |" in md1 and "no best lr" in md1
    # one lr per optimizer only -> no table
    assert rp.best_lr_table([x for x in runs if x.config["model.optimizer.init_args.lr"]
                             in (1e-3, 0.1)], s.label_keys) is None


# --------------------------------------------------------------------------- #
# files end to end
# --------------------------------------------------------------------------- #
def test_report_end_to_end(sweep_dir, tmp_path, capsys):
    out = tmp_path / "rep"
    rc = rp.main([str(sweep_dir), "--out", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    md = (out / "summary.md").read_text()
    assert "never_started" in captured.err    # pending run without events is skipped
    # markdown table (also printed)
    head = ("| label | seeds | final train loss | final val loss | final acc@1 | "
            "Δ final val/loss vs baseline | p (Holm) | Δ ≠ 0 (Holm) | L* | steps to L* | "
            "slowdown | equivalent slowdown |")
    assert head in md and head in captured.out
    assert ("| scope=none | 2 | 3.2500 ± 3.1766 | 3.0000 ± 3.1766 | 0.6250 ± 1.5883 | - | - | - | "
            "3.0000 | 100 | baseline | - |") in md
    assert ("| scope=global | 2 | 2.7500 ± 3.1766 | 2.7500 ± 3.1766 | 0.5000 ± 0.0000 | "
            "-0.2500 ± 0.0000 | <1e-4 (<1e-4) | yes | 3.0000 | 150 | +50.0% [+50.0%, +50.0%] | "
            "beyond baseline |") in md
    # one seed: marked, never a zero-width interval; the mean curve crosses nothing
    # equivalent: layer ends at 3.25, which the baseline's mean [4, 3, 3, 3] passes at
    # 50 + 50 * 0.75 = 87.5: 200 / 87.5 - 1 = +128.6 %
    assert ("| scope=layer | 1 | 3.2500 (1 seed) | 3.2500 (1 seed) | 0.2500 (1 seed) | "
            "+0.2500 (1 seed) | - | - | 3.0000 | never reached | never reached (1 seed) | "
            "+128.6% (1 seed) |") in md
    assert "one seed, no interval: scope=layer" in md
    # csv numbers exact
    rows = {r["label"]: r for r in read_csv(out / "summary.csv")}
    assert list(rows) == ["scope=none", "scope=global", "scope=layer"]
    n = rows["scope=none"]
    assert n["n_seeds"] == "2" and n["seeds"] == "0;1"
    assert float(n["final_val_loss_mean"]) == 3.0
    assert float(n["final_val_loss_ci95"]) == pytest.approx(half2(3.25, 2.75), rel=1e-15)
    assert float(n["final_train_loss_mean"]) == 3.25
    assert float(n["final_acc1_mean"]) == 0.625
    assert float(n["final_acc1_ci95"]) == pytest.approx(half2(0.5, 0.75), rel=1e-15)
    g = rows["scope=global"]
    assert (g["baseline"], float(g["target"]), g["baseline_steps"], g["steps_to_target"]) == \
        ("scope=none", 3.0, "100.0", "150.0")          # interpolated first passages: floats
    assert (g["slowdown_method"], g["diff_p"], g["diff_resolved_holm"]) == ("paired t", "0.0", "True")
    assert float(g["slowdown_pct"]) == 50.0 and g["slowdown"] == "+50.0%"
    lay = rows["scope=layer"]
    assert lay["slowdown"] == "never reached" and lay["slowdown_pct"] == "" and lay["steps_to_target"] == ""
    assert lay["final_val_loss_ci95"] == "" and lay["diff_ci95"] == ""
    # figure
    png = out / "loss_curves.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "best_lr.csv").exists()   # lr does not vary


def test_report_single_run_dirs_groups_and_best_lr(tmp_path, capsys):
    runs_root = tmp_path / "runs"
    val = {("AdamW", 1e-3): 3.0, ("AdamW", 3e-3): 2.5, ("SGD", 0.1): 3.5, ("SGD", 0.3): 3.25}
    dirs = []
    for (opt, lr), v in val.items():
        for scope in ("none", "global"):
            d = runs_root / f"{opt}_{lr}_{scope}"
            # global reaches the baseline's final loss one eval later (steps 100 -> 200)
            curve = [(100, v), (200, v), (300, v)] if scope == "none" else \
                [(100, v + 1), (200, v), (300, v)]
            write_run(d, config(scope, 0, lr, f"torch.optim.{opt}", root=str(d)),
                      {"train/loss": [(300, v)], "val/loss": curve})
            dirs.append(d)
    out = tmp_path / "rep"
    # parent dir (no index.json) expands to its run dirs
    rc = rp.main([str(runs_root), "--out", str(out), "--group-keys", "optimizer",
                  "--label-keys", "scope,lr", "--baseline", "scope=none,lr=0.001"])
    # baseline "scope=none,lr=0.001" only exists for AdamW -> warning for SGD, not an error
    assert rc == 0
    err = capsys.readouterr().err
    assert "SGD" in err and "no slowdown" in err
    rows = read_csv(out / "summary.csv")
    assert [(r["optimizer"], r["label"]) for r in rows][:2] == [
        ("AdamW", "scope=none, lr=0.001"), ("AdamW", "scope=global, lr=0.001")]
    r = {(x["optimizer"], x["label"]): x for x in rows}
    assert r[("AdamW", "scope=global, lr=0.001")]["slowdown"] == "+100.0%"
    assert r[("AdamW", "scope=none, lr=0.003")]["slowdown"] == "+0.0%"
    assert r[("SGD", "scope=global, lr=0.1")]["slowdown"] == ""
    for g in ("AdamW", "SGD"):
        p = out / f"loss_curves_optimizer={g}.png"
        assert p.stat().st_size > 10_000
    best = {(x["optimizer"], x["setting"]): x for x in read_csv(out / "best_lr.csv")}
    assert float(best[("AdamW", "scope=none")]["best_lr"]) == 0.003
    assert float(best[("AdamW", "scope=none")]["best_mean"]) == 2.5
    assert float(best[("SGD", "scope=global")]["best_lr"]) == 0.3
    assert float(best[("SGD", "scope=global")]["best_mean"]) == 3.25
    # one seed per lr, best lr at the edge of a 2-point grid: flagged, not reported as optimum
    bmd = (out / "best_lr.md").read_text()
    assert ("| AdamW | scope=none | not interior (0.003 at the edge) | 2.5000 (1 seed) | 1 | "
            "0.001, 0.003 | edge optimum: extend the grid above, e.g. add lr 0.009 |") in bmd

    # a single run dir works too; unknown key is a clear error
    assert rp.main([str(dirs[0]), "--out", str(tmp_path / "one")]) == 0
    assert "| all | 1 |" in (tmp_path / "one" / "summary.md").read_text()
    assert rp.main([str(dirs[0]), "--out", str(tmp_path / "x"), "--label-keys", "bogus"]) == 2
    assert "unknown config key 'bogus'" in capsys.readouterr().err


def test_reads_tf2_style_scalars_and_resumed_duplicates(tmp_path):
    """tensorboard.summary.Writer (tensor scalars) is read too; a step logged
    again after a resume keeps the later value."""
    from tensorboard.summary import Writer

    d = tmp_path / "run"
    w = Writer(str(d))
    for s, v in [(10, 4.0), (20, 3.5), (30, 3.25)]:
        w.add_scalar("val/loss", v, step=s)
    w.flush()
    w.close()
    sc = rp.read_scalars(d)
    assert sc["val/loss"][0].tolist() == [10, 20, 30]
    assert sc["val/loss"][1].tolist() == [4.0, 3.5, 3.25]
    # resume from a step-10 checkpoint: a second event file re-logs steps 20, 30
    import time

    time.sleep(1.1)  # event file names carry the time in seconds
    w = Writer(str(d))
    for s, v in [(20, 3.75), (30, 3.5), (40, 3.0)]:
        w.add_scalar("val/loss", v, step=s)
    w.flush()
    w.close()
    assert len([p for p in d.iterdir() if "tfevents" in p.name]) == 2
    sc = rp.read_scalars(d)
    assert sc["val/loss"][0].tolist() == [10, 20, 30, 40]
    assert sc["val/loss"][1].tolist() == [4.0, 3.75, 3.5, 3.0]


def test_auto_label_keys_use_the_nearest_class_path_when_nested():
    """LightningCLI configs nest ``model.init_args.optimizer.init_args.*``: an optimizer argument
    fixed by ``model.init_args.optimizer.class_path`` is not a label (the demo's case)."""
    def cfg(scope, opt, **args):
        c = {"model.class_path": "lightning_modules.gpt.GPTLightningModule",
             "model.init_args.rotation.scope": scope,
             "model.init_args.optimizer.class_path": opt}
        c.update({f"model.init_args.optimizer.init_args.{k}": v for k, v in args.items()})
        return c
    runs = [
        rp.make_run("a", cfg("none", "torch.optim.AdamW", lr=3e-3, amsgrad=False), {}),
        rp.make_run("b", cfg("global", "torch.optim.AdamW", lr=3e-3, amsgrad=False), {}),
        rp.make_run("c", cfg("none", "torch.optim.SGD", lr=0.1, momentum=0.9), {}),
        rp.make_run("d", cfg("global", "torch.optim.SGD", lr=0.1, momentum=0.9), {}),
    ]
    assert rp.auto_label_keys(runs) == ["model.init_args.rotation.scope",
                                        "model.init_args.optimizer.class_path"]


# --------------------------------------------------------------------------- #
# issue 16 item 11: real LightningCLI layout, runs without config.yaml, cut-off runs
# --------------------------------------------------------------------------- #
def cli_config(opt, lr, seed, scope="none", max_steps=200, **args):
    """The layout LightningCLI saves (``model.init_args.optimizer.init_args.lr``)."""
    return {"seed_everything": seed,
            "trainer": {"max_steps": max_steps, "default_root_dir": "runs/x",
                        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                   "init_args": {"save_dir": "runs/x"}}},
            "model": {"class_path": "lightning_modules.gpt.GPTLightningModule",
                      "init_args": {"min_lr_ratio": 1e-5 / lr,
                                    "rotation": {"scope": scope},
                                    "optimizer": {"class_path": opt,
                                                  "init_args": {"lr": lr, **args}}}},
            "ckpt_path": None}


def test_best_lr_from_real_layout_configs_interior_and_edge(tmp_path, capsys):
    """Half-decade grids, 3 seeds: AdamW's best lr is interior (reported with its interval),
    Signum's at the top edge (flagged with the lr to add)."""
    import scipy.stats as st

    grids = {"torch.optim.AdamW": ([1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1], [3.0, 2.625, 2.5, 2.75, 3.125]),
             "rotations.zoo.Signum": ([1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2], [3.5, 3.25, 3.0, 2.875, 2.75])}
    offsets = {0: -0.125, 1: 0.0, 2: 0.125}
    for opt, (lrs, finals) in grids.items():
        for lr, f in zip(lrs, finals):
            for seed, off in offsets.items():
                d = tmp_path / "sweep" / f"{opt.rsplit('.', 1)[1]}_lr={lr:g}_seed={seed}"
                write_run(d, cli_config(opt, lr, seed, betas=[0.9, 0.95]),
                          {"val/loss": [(100, f + off + 1.0), (200, f + off)]})
    out = tmp_path / "rep"
    assert rp.main([str(tmp_path / "sweep"), "--out", str(out)]) == 0
    rows = {r["optimizer"]: r for r in read_csv(out / "best_lr.csv")}
    assert set(rows) == {"AdamW", "Signum"}            # min_lr_ratio follows lr: not a setting
    a, s = rows["AdamW"], rows["Signum"]
    assert (float(a["best_lr"]), a["at_edge"], float(a["best_mean"]), a["n_seeds"]) == \
        (0.01, "False", 2.5, "3")
    half = st.t.ppf(0.975, 2) * st.sem([2.375, 2.5, 2.625])
    assert float(a["best_ci95"]) == pytest.approx(half, rel=1e-12)
    assert (float(s["best_lr"]), s["at_edge"]) == (0.01, "True")
    assert float(s["extend_with"]) == pytest.approx(0.0316, rel=1e-3)  # one half-decade above
    md = (out / "best_lr.md").read_text()
    assert f"| AdamW | - | 0.01 | 2.5000 ± {half:.4f} | 3 | 0.001, 0.00316, 0.01, 0.0316, 0.1 |  |" in md
    assert ("| Signum | - | not interior (0.01 at the edge) | 2.7500 ± "
            f"{half:.4f} | 3 | 0.0001, 0.000316, 0.001, 0.00316, 0.01 | edge optimum: extend "
            "the grid above, e.g. add lr 0.0316 |") in md


def test_run_without_config_is_left_out_not_a_label_source(tmp_path, capsys):
    root = tmp_path / "runs"
    for scope, v in (("none", 3.0), ("global", 3.5)):
        write_run(root / f"run_{scope}", config(scope, 0), {"val/loss": [(100, v + 1), (200, v)]})
    stray = root / "stray"
    write_run(stray, {}, {"val/loss": [(100, 9.0), (200, 8.0)]})
    (stray / "config.yaml").unlink()
    out = tmp_path / "rep"
    assert rp.main([str(root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "stray: no config.yaml; left out of the report" in err
    rows = read_csv(out / "summary.csv")
    assert [r["label"] for r in rows] == ["scope=none", "scope=global"]   # not every config key
    # when no run has a config, the directory names are the labels
    runs = [rp.make_run("a", None, {"val/loss": [(1, 2.0)]}),
            rp.make_run("b", None, {"val/loss": [(1, 3.0)]})]
    with pytest.warns(UserWarning, match="labelled by directory name"):
        s = rp.summarize(runs)
    assert [r["label"] for r in s.rows] == ["run=a", "run=b"]


def test_truncated_run_is_flagged_not_reported_as_final(tmp_path, capsys):
    root = tmp_path / "runs"
    full = [(s, 4.0 - s / 200) for s in range(49, 400, 50)]           # 49 ... 399: complete
    write_run(root / "run_none", config("none", 0) | {"trainer": {"max_steps": 400}},
              {"val/loss": full, "train/loss": [(s, 3.0) for s in range(9, 400, 10)]})
    cut = [p for p in full if p[0] <= 249]                            # killed at step ~250
    write_run(root / "run_global", config("global", 0) | {"trainer": {"max_steps": 400}},
              {"val/loss": cut, "train/loss": [(s, 3.0) for s in range(9, 260, 10)]})
    out = tmp_path / "rep"
    assert rp.main([str(root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "run run_global stops at step 249 before trainer.max_steps 400" in err
    rows = {r["label"]: r for r in read_csv(out / "summary.csv")}
    assert rows["scope=global"]["truncated"] == "run_global" and rows["scope=none"]["truncated"] == ""
    md = (out / "summary.md").read_text()
    assert "| scope=global | 1 | 3.0000 (1 seed)† | 2.7550 (1 seed)† |" in md
    assert "| scope=none | 1 | 3.0000 (1 seed) | 2.0050 (1 seed) |" in md
    r = rp.make_run("x", {"trainer": {"max_steps": 400}}, {"val/loss": full})
    assert r.truncated("val/loss") is None
    assert rp.make_run("x", {"trainer": {"max_steps": 400}}, {"val/loss": cut}).truncated(
        "val/loss") == 249
    assert rp.make_run("x", {}, {"val/loss": cut}).truncated("val/loss") is None   # unknown


def test_difference_intervals_from_event_files_match_scipy(tmp_path):
    """3 seeds per scope, paired by seed (same seeds) and unpaired (other seeds): the Δ column
    is the paired t / Welch interval of scipy.stats; 'excludes 0' follows it."""
    import scipy.stats as st

    none = {0: 3.0, 1: 3.25, 2: 2.875}
    glob = {0: 3.5, 1: 3.625, 2: 3.5}                  # same seeds: paired
    lay = {3: 3.125, 4: 3.5, 5: 2.75}                   # other seeds: Welch
    root = tmp_path / "runs"
    for scope, finals in (("none", none), ("global", glob), ("layer", lay)):
        for seed, v in finals.items():
            write_run(root / f"r_{scope}_{seed}", config(scope, seed),
                      {"val/loss": [(100, v + 1.0), (200, v)]})
    out = tmp_path / "rep"
    assert rp.main([str(root), "--out", str(out)]) == 0
    rows = {r["label"]: r for r in read_csv(out / "summary.csv")}
    g, l = rows["scope=global"], rows["scope=layer"]
    p = st.ttest_rel(list(glob.values()), list(none.values())).confidence_interval()
    assert g["diff_method"] == "paired t"
    assert float(g["diff"]) == pytest.approx((p.low + p.high) / 2, rel=1e-12)
    assert float(g["diff_ci95"]) == pytest.approx((p.high - p.low) / 2, rel=1e-9)
    assert g["diff_excludes_zero"] == str(p.low > 0 or p.high < 0) == "True"
    w = st.ttest_ind(list(lay.values()), list(none.values()), equal_var=False).confidence_interval()
    assert l["diff_method"] == "Welch t"
    assert float(l["diff_ci95"]) == pytest.approx((w.high - w.low) / 2, rel=1e-9)
    assert l["diff_excludes_zero"] == "False"
    # final values: mean and t interval per label
    n = rows["scope=none"]
    lo, hi = st.t.interval(0.95, 2, loc=np.mean(list(none.values())), scale=st.sem(list(none.values())))
    assert float(n["final_val_loss_ci95"]) == pytest.approx((hi - lo) / 2, rel=1e-9)


def test_runs_on_different_validation_sets_are_flagged(tmp_path, capsys):
    """``data.json`` (written by ``adamrot fit``) names each run's validation digest; a report
    over runs validated on different windows says so (their val/ numbers do not compare)."""
    root = tmp_path / "runs"
    for scope, digest in (("none", "aaaa"), ("global", "bbbb"), ("layerwise", "aaaa")):
        d = root / f"run_{scope}"
        write_run(d, config(scope, 0), {"val/loss": [(100, 4.0), (200, 3.0)]})
        (d / "data.json").write_text(json.dumps({"val_digest": digest, "val_windows": 8}))
    assert rp.main([str(root), "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err
    assert "validated on 2 different validation sets" in err
    assert "aaaa: 2 run(s)" in err and "bbbb: 1 run(s), e.g. run_global" in err
    (root / "run_global" / "data.json").write_text(json.dumps({"val_digest": "aaaa"}))
    assert rp.main([str(root), "--out", str(tmp_path / "rep2")]) == 0
    assert "different validation sets" not in capsys.readouterr().err


def test_a_mapping_valued_label_key_labels_its_runs():
    """``rotation.only`` is null in the baseline and a mapping in the other runs (App. C.2); the
    flattened config holds ``rotation.only.value`` then: the label must still tell them apart
    (found in the session-5 catalogue: all 30 App. C.2 runs became one label "only=n/a")."""
    def run(only, seed, final):
        cfg = {"seed_everything": seed, "model": {"rotation": {"scope": "none", "only": only}}}
        return rp.make_run(f"{only}_{seed}", cfg, {"val/loss": [(0, 4.0), (10, final)]})

    runs = [run(None, s, 2.0 + s) for s in (0, 1)] + \
        [run({"value": "layerwise"}, s, 2.5 + s) for s in (0, 1)] + \
        [run({"embedding": "outputwise"}, s, 2.25 + s) for s in (0, 1)]
    s = rp.summarize(runs, label_keys=["only"], baseline="only=null")
    rows = {r["label"]: r for r in s.rows}
    assert set(rows) == {"only=null", 'only={"value":"layerwise"}', 'only={"embedding":"outputwise"}'}
    assert all(r["n_seeds"] == 2 for r in s.rows)
    assert rows['only={"value":"layerwise"}']["diff"] == 0.5
    assert rows['only={"embedding":"outputwise"}']["diff"] == 0.25
    # without the baseline runs the key exists only as a mapping: it still resolves
    s2 = rp.summarize(runs[2:], label_keys=["only"])
    assert sorted(r["label"] for r in s2.rows) == ['only={"embedding":"outputwise"}',
                                                   'only={"value":"layerwise"}']
    assert rp.config_value({"a.b.c": 1, "a.b.d": 2, "a.e": 3}, "a.b") == {"c": 1, "d": 2}
