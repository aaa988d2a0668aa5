"""``adamrot probe`` end to end on a tiny GPT run directory: the result file, resuming after
Ctrl-C (twice), refusing other settings, intervals in the summary, bad checkpoints."""
from __future__ import annotations

import functools
import json

import pytest
import torch

from adamrot import probe
from adamrot.cli import main as cli_main
from adamrot.probe import loading


def write_run(root, scope):
    """A tiny run directory: config.yaml in LightningCLI's layout and a checkpoint written
    by hand after 3 AdamW steps of a GPTLightningModule."""
    import yaml

    from lightning_modules.gpt import GPTLightningModule

    model_args = dict(vocab_size=257, block_size=8, n_layer=1, n_head=2, n_embd=8,
                      warmup_steps=0, rotation={"scope": scope, "block_size": 32, "seed": 1})
    opt_args = dict(lr=1e-2, betas=[0.9, 0.95], weight_decay=0.1)
    torch.manual_seed(0)
    module = GPTLightningModule(optimizer=functools.partial(torch.optim.AdamW, **opt_args),
                                **model_args)
    opt = module.build_optimizer()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randint(0, 257, (2, 9), generator=g)
        opt.zero_grad()
        module.model(x[:, :-1], x[:, 1:])[1].backward()
        opt.step()
    (root / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 3, "state_dict": module.state_dict(),
                "optimizer_states": [opt.state_dict()]}, root / "checkpoints" / "last.ckpt")
    conf = {"model": {"class_path": "lightning_modules.gpt.GPTLightningModule",
                      "init_args": dict(model_args, compile=False, attention="math",
                                        optimizer={"class_path": "torch.optim.AdamW",
                                                   "init_args": opt_args})},
            "data": {"class_path": "datamodules.text.TextDataModule",
                     "init_args": {"block_size": 8, "batch_size": 2, "max_bytes": 60000,
                                   "val_fraction": 0.1, "num_workers": 0}}}
    (root / "config.yaml").write_text(yaml.safe_dump(conf))
    return root


PROBE_ARGS = ["--batches", "3", "--hessian-rows", "3", "--hessian-batches", "3",
              "--cauchy-vectors", "2", "--random-directions", "2", "--row-types",
              "value,mlp_in,embedding", "--device", "cpu", "--dtype", "float64",
              "--save-every", "1", "--no-progress"]

ITERATE = loading.BatchStream.iterate


def ctrl_c_after(monkeypatch, n: int) -> None:
    """Simulate Ctrl-C when the probe asks for its (n+1)-th batch (from now on)."""
    count = [0]

    def iterate(self, start, cnt):
        for b in ITERATE(self, start, cnt):
            if count[0] == n:
                raise KeyboardInterrupt
            count[0] += 1
            yield b

    monkeypatch.setattr(loading.BatchStream, "iterate", iterate)


def test_probe_end_to_end_and_resume(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run", "global")
    assert cli_main(["probe", str(run), "--out", str(tmp_path / "a")] + PROBE_ARGS) == 0
    full = json.loads((tmp_path / "a" / "probe.json").read_text())
    assert full["rotated"] and full["rotation"]["scope"] == "global"
    assert full["gradient_bound"]["batches"] == 3 and full["gradient_bound"]["value"] > 0
    rows = full["hessian"]["rows"]
    assert [r["ptype"] for r in rows] == ["value", "mlp_in", "embedding"]
    r = rows[0]
    assert r["blocks"]["neuron"]["size"] == 8 and r["blocks"]["layer"]["size"] == 56
    assert sum(b["size"] for b in r["blocks"].values()) == full["d"]
    assert sum(sum(b["log10_hist"]) + b["zeros"] for b in r["blocks"].values()) == full["d"]
    con = r["contributions"]
    assert len(con["random"]["neuron"]) == 2
    assert con["update"]["total"] == pytest.approx(
        con["update"]["neuron"] + con["update"]["layer"] + con["update"]["other"])
    assert full["update_direction"]["available"]
    oo = full["one_one_norm"]
    assert oo["estimate"] == pytest.approx(sum(x["l1"] for x in rows) / 3)
    assert full["one_one_norm_cauchy"]["vectors"] == 2
    assert (tmp_path / "a" / "hessian_blocks.png").is_file()
    assert not (tmp_path / "a" / "probe.partial.json").exists()

    # interrupted twice (inside a row's batches, then after a row), resumed twice
    out_b = ["--out", str(tmp_path / "b")]
    ctrl_c_after(monkeypatch, 3 + 2)            # 3 bound batches, 2 of the first row's 3
    assert probe.main([str(run)] + out_b + PROBE_ARGS) == 130
    part = json.loads((tmp_path / "b" / "probe.partial.json").read_text())
    assert len(part["bound"]["per_batch"]) == 3 and part["rows"] == {}
    assert (tmp_path / "b" / "probe.hvp.pt").is_file()
    ctrl_c_after(monkeypatch, 1)                # the first row's last batch, then stop
    assert probe.main([str(run)] + out_b + PROBE_ARGS) == 130
    part = json.loads((tmp_path / "b" / "probe.partial.json").read_text())
    assert len(part["rows"]) == 1
    monkeypatch.setattr(loading.BatchStream, "iterate", ITERATE)
    # other settings are refused while a partial result exists
    assert probe.main([str(run)] + out_b + PROBE_ARGS + ["--seed", "1"]) == 2
    assert probe.main([str(run)] + out_b + PROBE_ARGS) == 0
    res = json.loads((tmp_path / "b" / "probe.json").read_text())
    assert res["resumed"] and res["computed_this_run"]["bound_batches"] == 0
    assert res["computed_this_run"]["row_passes"] == 2
    for x, y in zip(res["hessian"]["rows"], rows):
        assert x["index"] == y["index"]
        assert x["l1"] == pytest.approx(y["l1"], rel=1e-12)
        assert x["contributions"]["update"]["other"] == pytest.approx(
            y["contributions"]["update"]["other"], rel=1e-9, abs=1e-15)
    assert res["gradient_bound"]["value"] == full["gradient_bound"]["value"]
    assert res["one_one_norm_cauchy"]["estimate"] == pytest.approx(
        full["one_one_norm_cauchy"]["estimate"], rel=1e-12)


def test_probe_reports_intervals(tmp_path, capsys):
    """The summary's intervals are those of the rows it lists: (1,1)-norm over rows, Table 1
    dominance over rows of the per-row mean over directions."""
    from rotations.probes import mean_interval

    run = write_run(tmp_path / "run", "none")
    args = [a if a != "3" else "4" for a in PROBE_ARGS]        # 4 rows, batches, ...
    assert probe.main([str(run), "--out", str(tmp_path / "o"), "--no-figures"] + args) == 0
    res = json.loads((tmp_path / "o" / "probe.json").read_text())
    rows = res["hessian"]["rows"]
    assert len(rows) == 4
    oo, want = res["one_one_norm"], mean_interval([r["l1"] for r in rows])
    assert oo["ci"] == pytest.approx([want["lo"], want["hi"]], rel=1e-12)
    assert oo["ci"][0] < oo["estimate"] < oo["ci"][1]
    st = oo["stratified"]                       # rows weighted by their type's coordinates
    w = st["weights"]
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["value"] / w["mlp_in"] == pytest.approx(8 * 8 / (32 * 8))
    by_type = {}
    for r in rows:
        by_type.setdefault(r["ptype"], []).append(r["l1"])
    assert st["estimate"] == pytest.approx(
        sum(w[t] * sum(x) / len(x) for t, x in by_type.items()), rel=1e-12)
    t1 = res["hessian"]["intervals"]
    per_row = [sum(abs(o) - abs(n) for o, n in zip(r["contributions"]["random"]["other"],
                                                     r["contributions"]["random"]["neuron"])) / 2
               for r in rows]
    iv = t1["random"]["other_minus_neuron"]
    assert iv["mean"] == pytest.approx(sum(per_row) / 4, rel=1e-12)
    assert iv["directions"] == 2 and iv["n"] == 4
    assert (iv["lo"], iv["hi"]) == pytest.approx((mean_interval(per_row)["lo"],
                                                  mean_interval(per_row)["hi"]), rel=1e-12)
    assert t1["random"]["verdict"] in ("holds", "contradicted", "unresolved")
    assert t1["update"]["other"]["n"] == 4
    out = capsys.readouterr().out
    assert "95% CI" in out and "Table 1 (random δ" in out


def test_truncated_checkpoint_is_one_error_line(tmp_path, capsys):
    run = write_run(tmp_path / "run", "global")
    ckpt = run / "checkpoints" / "last.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert cli_main(["probe", str(run), "--out", str(out)] + PROBE_ARGS) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("adamrot: error: ")
    assert str(ckpt) in lines[0] and "Traceback" not in err
    assert not out.exists()                     # refused before anything is written


def test_compare_one_one_is_welch_over_rows():
    from adamrot.probe.summary import compare_one_one
    from rotations.probes import t_quantile

    a = {"hessian": {"rows": [{"l1": x} for x in (4.0, 5.0, 6.0)]}}
    b = {"hessian": {"rows": [{"l1": x} for x in (1.0, 2.0, 3.0)]}}
    d = compare_one_one(a, b)
    se = (1 / 3 + 1 / 3) ** 0.5                     # sd 1 on both sides, 3 rows each
    assert d["mean"] == pytest.approx(3.0) and d["df"] == 4
    assert d["half_width"] == pytest.approx(t_quantile(0.975, 4) * se)
    assert d["excludes"] and d["lo"] == pytest.approx(3.0 - d["half_width"])


def test_unwritable_output_is_one_error_line(tmp_path, capsys):
    run = write_run(tmp_path / "run", "none")
    blocker = tmp_path / "a_file"
    blocker.write_text("")                      # --out below a regular file: mkdir fails
    assert probe.main([str(run), "--out", str(blocker / "x")] + PROBE_ARGS) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("adamrot: error: ")
    assert str(blocker / "x") in lines[0] and "Traceback" not in err
