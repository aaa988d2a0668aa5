"""The reproduction catalogue (``configs/paper/``, ``docs/REPRODUCE.md``).

* every catalogue config parses through the CLI parser (full configs alone, overlays on
  their base); every sweep file validates with :mod:`adamrot.sweep`'s loader and every
  expanded run's overrides parse;
* the paper-scale models are built on the meta device with the papers' parameter counts;
* every CPU twin trains a few steps (2-step fits of a covering subset of its runs, tiny
  data), the resumed update-orthogonality overlay resumes and logs, and the probe argument
  lists of ``configs/paper/probes.yaml`` parse (one tiny probe runs).
"""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from adamrot import sweep as sweep_mod
from adamrot.cli import main

from test_cli import ParseOnlyCLI, parse, scalars

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper"
CPU = PAPER / "cpu"

SWEEPS = sorted(PAPER.rglob("*.sweep.yaml"))
PAPER_SWEEPS = [p for p in SWEEPS if p.parent == PAPER]
CPU_SWEEPS = [p for p in SWEEPS if p.parent == CPU]
# plain configs: full configs load alone, overlays on the base named here
FULL = {PAPER / "og_llama160m.yaml", CPU / "gpt2_tiny.yaml", CPU / "llama_tiny.yaml"}
OVERLAYS = {PAPER / "neurips_update_orth.yaml": ROOT / "configs/gpt2/base.yaml",
            CPU / "neurips_update_orth.yaml": CPU / "gpt2_tiny.yaml"}

# parameter counts of the papers' models
GPT2_124M = 124_373_760          # nanoGPT, no biases, vocab 50304, tied embedding counted once
LLAMA_160M = 162_220_800         # variant llama, untied, 12/12/768, SwiGLU 2048
VIT_S16 = 21_974_632             # SimpleViT-S/16 ("22M")
RESNET50 = 25_557_032
PAPER_COUNTS = {"lightning_modules.gpt.GPTLightningModule": {GPT2_124M, LLAMA_160M},
                "lightning_modules.vit.ViTLightningModule": {VIT_S16},
                "lightning_modules.resnet.ResNetLightningModule": {RESNET50}}

ids = lambda p: str(p.relative_to(ROOT))   # noqa: E731


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)                    # sweep files name configs relative to the repo


@pytest.fixture(scope="module")
def parser():
    """One parser for all sweep runs (building a LightningCLI per run is slow)."""
    cli = ParseOnlyCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                       subclass_mode_data=True, run=False,
                       args=["--config", rel(CPU / "gpt2_tiny.yaml")],
                       auto_configure_optimizers=False)
    return cli.parser


def run_args(spec, run) -> list[str]:
    """The ``--config …`` / ``--key value`` part of the run's command line."""
    cmd = sweep_mod.build_command(spec, run, "runs/paper/_test")
    i = cmd.index("--config")
    return cmd[i:]


def meta_params(cfg) -> int:
    mod, _, cls = cfg.model.class_path.rpartition(".")
    C = getattr(importlib.import_module(mod), cls)
    kw = cfg.model.init_args.as_dict()
    kw.pop("optimizer", None)
    with torch.device("meta"):
        m = C(**kw)
    return sum(p.numel() for p in m.model.parameters())


# ------------------------------------------------------------------------------------------
# every file is listed in docs/REPRODUCE.md and has a twin
# ------------------------------------------------------------------------------------------
def test_every_paper_sweep_has_a_cpu_twin_and_is_documented():
    doc = (ROOT / "docs" / "REPRODUCE.md").read_text()
    for p in PAPER_SWEEPS:
        assert (CPU / p.name).exists(), f"{rel(p)} has no CPU twin"
        assert rel(p) in doc, f"{rel(p)} is not in docs/REPRODUCE.md"
        assert rel(CPU / p.name) in doc, f"{rel(CPU / p.name)} is not in docs/REPRODUCE.md"
    for p in CPU_SWEEPS:
        assert (PAPER / p.name).exists(), f"{rel(p)} twins no paper-scale file"
    for p in list(FULL) + list(OVERLAYS) + [PAPER / "probes.yaml"]:
        assert rel(p) in doc, f"{rel(p)} is not in docs/REPRODUCE.md"
    for png in re.findall(r"\(figures/([\w.=+-]+\.png)\)", doc):
        f = ROOT / "docs" / "figures" / png
        assert f.exists(), f"docs/REPRODUCE.md shows a missing figure {png}"
        assert f.stat().st_size < 400_000, f"{png} is not a small PNG"


def test_no_stray_files():
    known = set(SWEEPS) | FULL | set(OVERLAYS) | {PAPER / "probes.yaml"}
    for p in PAPER.rglob("*.yaml"):
        assert p in known, f"{rel(p)}: not covered by tests/test_catalogue.py"


# ------------------------------------------------------------------------------------------
# parsing
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(FULL | set(OVERLAYS)), ids=ids)
def test_config_parses(path):
    args = ["--config", rel(path)]
    if path in OVERLAYS:
        args = ["--config", rel(OVERLAYS[path])] + args
    cfg = parse(args)
    assert cfg.model.class_path and cfg.data.class_path


@pytest.mark.parametrize("path", SWEEPS, ids=ids)
def test_sweep_loads_and_every_run_parses(path, parser):
    spec = sweep_mod.load_spec(rel(path))
    runs = sweep_mod.expand_runs(spec)
    assert runs
    expected_out = "runs/paper/cpu/" if path.parent == CPU else "runs/paper/"
    assert spec.out_dir.startswith(expected_out) and spec.out_dir[len(expected_out):] \
        == path.name[:-len(".sweep.yaml")]
    seen = set()
    for run in runs:
        key = json.dumps({k: v for k, v in run.overrides.items() if k != "seed_everything"},
                         sort_keys=True, default=str)
        if key in seen:                       # seeds of one setting parse alike
            continue
        seen.add(key)
        cfg = parser.parse_args(run_args(spec, run))
        assert cfg.model.class_path and cfg.trainer.default_root_dir


def test_og_schedule_floor_is_1e5():
    for path in (PAPER / "og_optimizers.sweep.yaml", CPU / "og_optimizers.sweep.yaml",
                 PAPER / "og_one_beta.sweep.yaml", CPU / "og_one_beta.sweep.yaml"):
        for run in sweep_mod.expand_runs(sweep_mod.load_spec(rel(path))):
            lr = run.overrides["model.init_args.optimizer"]["init_args"]["lr"]
            floor = lr * run.overrides["model.init_args.min_lr_ratio"]
            assert floor == pytest.approx(1e-5, rel=1e-4), (path.name, run.name)
    spec = sweep_mod.load_spec(rel(PAPER / "og_optimizers.sweep.yaml"))
    runs = sweep_mod.expand_runs(spec)
    assert len(runs) == 90 and {r.overrides["seed_everything"] for r in runs} == {0, 1, 2}
    classes = {r.overrides["model.init_args.optimizer"]["class_path"] for r in runs}
    assert classes == {"torch.optim.AdamW", "rotations.zoo.Signum", "rotations.zoo.SignSGD",
                       "torch.optim.SGD", "rotations.zoo.ClippedSGD"}
    cfg = parse(["--config", rel(PAPER / "og_llama160m.yaml")])
    t, a = cfg.trainer, cfg.model.init_args
    assert (a.block_size, cfg.data.init_args.block_size) == (2048, 2048)
    assert cfg.data.init_args.batch_size * t.accumulate_grad_batches == 256
    assert t.max_steps == 6200 and a.warmup_steps == 620 and t.gradient_clip_val == 1.0
    assert a.variant == "llama" and a.tie_embeddings is False
    assert cfg.data.init_args.source == "hub" and cfg.data.init_args.text_column == "text"


# ------------------------------------------------------------------------------------------
# paper-scale models on the meta device
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PAPER_SWEEPS + [PAPER / "og_llama160m.yaml"], ids=ids)
def test_paper_scale_model_has_the_papers_parameter_count(path, parser):
    if path.name.endswith(".sweep.yaml"):
        spec = sweep_mod.load_spec(rel(path))
        cfg = parser.parse_args(run_args(spec, sweep_mod.expand_runs(spec)[0]))
    else:
        cfg = parse(["--config", rel(path)])
    n = meta_params(cfg)
    assert n in PAPER_COUNTS[cfg.model.class_path], (rel(path), n)
    if cfg.model.class_path.endswith("GPTLightningModule"):
        want = LLAMA_160M if cfg.model.init_args.variant == "llama" else GPT2_124M
        assert n == want


# ------------------------------------------------------------------------------------------
# every CPU twin trains
# ------------------------------------------------------------------------------------------
TEXT_TINY = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
             "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
             "--data.init_args.max_bytes", "120000", "--data.init_args.val_max_tokens", "2048",
             "--checkpoint.every_n_train_steps", "2"]
VISION_TINY = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
               "--trainer.limit_train_batches", "2", "--trainer.log_every_n_steps", "1"]


def fit_key(run) -> str:
    o = run.overrides
    opt = o.get("model.init_args.optimizer", {})
    cbs = [c.get("class_path") for c in o.get("trainer.callbacks", [])]
    return json.dumps([opt.get("class_path") if isinstance(opt, dict) else opt,
                       o.get("model.init_args.rotation.scope"),
                       # `only` by the scopes it uses: one type layer-wise covers the others
                       sorted(set((o.get("model.init_args.rotation.only") or {}).values())),
                       o.get("model.init_args.attention"), cbs], sort_keys=True, default=str)


def covering_runs():
    """Per CPU sweep, its first run plus every run with an optimizer / scope / only /
    attention / callbacks combination not already covered (across all sweeps)."""
    seen, out = set(), []
    for path in CPU_SWEEPS:
        spec = sweep_mod.load_spec(rel(path))
        runs = sweep_mod.expand_runs(spec)
        chosen = []
        for i, r in enumerate(runs):
            k = fit_key(r)
            if i == 0 or k not in seen:
                chosen.append(r)
                seen.add(k)
        out.append((path, spec, chosen))
    return out


@pytest.mark.parametrize("path,spec,runs", covering_runs(), ids=[ids(p) for p, _, _ in covering_runs()])
def test_cpu_twin_trains_a_few_steps(path, spec, runs, tmp_path):
    vision = any("vit_s16" in c or "resnet50" in c for c in spec.configs)
    for run in runs:
        d = tmp_path / run.name
        args = run_args(spec, run)[:-2]          # drop the sweep's default_root_dir
        main(["fit", *args, *(VISION_TINY if vision else TEXT_TINY),
              "--trainer.default_root_dir", str(d)])
        ck = torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
        assert ck["global_step"] == 2, (rel(path), run.name)
        loss = scalars(d, "train/loss")
        assert loss and all(v == v and abs(v) < 1e3 for _, v in loss), (run.name, loss)


def test_update_orthogonality_resume_overlay(tmp_path):
    base = ["--config", rel(CPU / "gpt2_tiny.yaml"), *TEXT_TINY,
            "--model.init_args.rotation.scope", "global"]
    main(["fit", *base, "--trainer.default_root_dir", str(tmp_path / "a")])
    main(["fit", *base, "--config", rel(CPU / "neurips_update_orth.yaml"),
          "--trainer.max_steps", "4",
          "--trainer.val_check_interval", "2",
          "--ckpt_path", str(tmp_path / "a" / "checkpoints" / "last.ckpt"),
          "--trainer.default_root_dir", str(tmp_path / "b")])
    cv = scalars(tmp_path / "b", "orth/cv/all")
    assert [s for s, _ in cv] == [3, 4] and all(v > 0 for _, v in cv)   # every resumed step


def test_probe_arguments_parse_and_a_tiny_probe_runs(tmp_path):
    from adamrot import probe
    spec = yaml.safe_load((PAPER / "probes.yaml").read_text())
    p = probe.build_parser()
    for part in ("paper", "cpu"):
        for name, e in spec[part]["experiments"].items():
            assert e["runs"] and e["out"], name
            for r in e["runs"]:
                args = p.parse_args([f"{spec[part]['root']}/{r}", "--out", "x", *e["args"]])
                assert args.target.endswith(r)
    rt = p.parse_args(["x", *spec["paper"]["experiments"]["fig9_hessian_rows_per_type"]["args"]])
    assert "value" in rt.row_types
    main(["fit", "--config", rel(CPU / "gpt2_tiny.yaml"), *TEXT_TINY,
          "--model.init_args.rotation.scope", "outputwise",
          "--trainer.default_root_dir", str(tmp_path)])
    rc = probe.main([str(tmp_path), "--device", "cpu", "--batches", "2", "--hessian-rows", "2",
                     "--hessian-batches", "1", "--random-directions", "1",
                     "--cauchy-vectors", "0", "--no-figures", "--no-progress"])
    assert rc in (0, None)
    assert (tmp_path / "probe" / "probe.json").exists()


def test_evidence_archive_keeps_everything_but_checkpoints_and_restore_never_overwrites(tmp_path):
    """``configs/paper/cpu/evidence.py``: the measured runs travel with the repository (events,
    configs, index, probe outputs; no checkpoints, locks or regenerated reports), and restoring
    them into a runs directory fills only what is missing."""
    spec = importlib.util.spec_from_file_location("evidence", CPU / "evidence.py")
    ev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev)
    runs, kept = tmp_path / "runs", tmp_path / "evidence"
    run = runs / "fig1a" / "scope=none_seed=0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x" * 1000)
    (run / "events.out.tfevents.1.vm.1.0").write_bytes(b"events")
    (run / "config.yaml").write_text("seed_everything: 0\n")
    (run / ".run.lock").write_text("123")
    (runs / "fig1a" / "index.json").write_text("{}")
    (runs / "reports" / "fig1a").mkdir(parents=True)
    (runs / "reports" / "fig1a" / "summary.csv").write_text("label\n")
    assert ev.main(["archive", "--runs", str(runs), "--evidence", str(kept)]) == 0
    got = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert got == ["fig1a/index.json", "fig1a/scope=none_seed=0/config.yaml",
                   "fig1a/scope=none_seed=0/events.out.tfevents.1.vm.1.0"]
    fresh = tmp_path / "fresh"
    (fresh / "fig1a").mkdir(parents=True)
    (fresh / "fig1a" / "index.json").write_text('{"newer": true}')
    assert ev.main(["restore", "--runs", str(fresh), "--evidence", str(kept)]) == 0
    assert (fresh / "fig1a" / "index.json").read_text() == '{"newer": true}'   # not overwritten
    assert (fresh / "fig1a/scope=none_seed=0/events.out.tfevents.1.vm.1.0").read_bytes() == b"events"


def test_reproduce_md_regenerates_byte_for_byte_from_the_evidence(tmp_path):
    """Every generated block of docs/REPRODUCE.md is what ``summarize.py --write-docs`` makes
    from the archived runs in docs/evidence/cpu (a copy: it writes reports there): no number in
    them was edited by hand or left stale by a change of the statistics (about 20 s)."""
    import shutil
    import subprocess
    import sys

    evidence = ROOT / "docs" / "evidence" / "cpu"
    if not evidence.is_dir():
        pytest.skip("no archived evidence")
    runs, out = tmp_path / "runs", tmp_path / "doc"
    shutil.copytree(evidence, runs, ignore=shutil.ignore_patterns("reports"))
    out.mkdir()
    doc = ROOT / "docs" / "REPRODUCE.md"
    shutil.copy(doc, out / "REPRODUCE.md")
    subprocess.run([sys.executable, str(CPU / "summarize.py"), "--runs", str(runs), "--write-docs",
                    "--doc", str(out / "REPRODUCE.md"), "--figures", str(out / "figures")],
                   check=True, capture_output=True, cwd=ROOT)
    assert (out / "REPRODUCE.md").read_bytes() == doc.read_bytes()
