"""``adamrot sweep`` keeps the experiment when the launcher changes the world size, and
preflights the runs (``--preflight``, and before ``--launcher slurm``)."""
from __future__ import annotations

import os
import shutil

import pytest
import yaml

from adamrot import sweep as sw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def paper(tmp_path, monkeypatch):
    """cwd = tmp_path holding configs/gpt2/{base,flash}.yaml (the paper config) and a sweep."""
    (tmp_path / "configs" / "gpt2").mkdir(parents=True)
    for name in ("base.yaml", "flash.yaml"):
        shutil.copy(os.path.join(REPO, "configs", "gpt2", name), tmp_path / "configs" / "gpt2")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path, **over):
    doc = {"name": "p", "out_dir": "runs/p", "configs": ["configs/gpt2/base.yaml"],
           "grid": {"model.init_args.rotation.scope": ["none", "global"]}}
    doc.update(over)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path.name


def test_gpus_per_node_divides_the_accumulation(paper, capsys):
    """accumulation 40 on 1 device -> 10 on 4 GPUs in every run's command (hence its
    config.yaml); the adjustment is printed; nothing is written by the dry run."""
    f = write(paper / "s.yaml")
    assert sw.main([f, "--dry-run", "--launcher", "slurm", "--time", "60",
                    "--gpus-per-node", "4"]) == 0
    out = capsys.readouterr().out
    assert "trainer.accumulate_grad_batches 40 -> 10 on 1 node(s) x 4 GPU(s)" in out
    commands = [line for line in out.splitlines() if "adamrot.cli fit" in line]
    assert len(commands) == 2
    assert all("--trainer.accumulate_grad_batches 10 " in c and "--trainer.devices 4" in c
               for c in commands)
    assert not (paper / "runs").exists()
    # two nodes of two GPUs: 40 / 4 as well; without --gpus-per-node nothing changes
    assert sw.main([f, "--dry-run", "--launcher", "slurm", "--time", "60", "--nodes", "2",
                    "--gpus-per-node", "2"]) == 0
    assert "40 -> 10 on 2 node(s) x 2 GPU(s)" in capsys.readouterr().out
    assert sw.main([f, "--dry-run"]) == 0
    assert "--trainer.accumulate_grad_batches" not in capsys.readouterr().out


def test_accumulation_that_does_not_divide_is_refused(paper, capsys):
    f = write(paper / "s.yaml", fixed={"trainer.accumulate_grad_batches": 30})
    assert sw.main([f, "--launcher", "slurm", "--time", "60", "--gpus-per-node", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adamrot: error: sweep file s.yaml: --gpus-per-node/--nodes")
    assert "trainer.accumulate_grad_batches 30 x 1 node(s) x 1 device(s) = 30" in err
    assert "not divisible by 1 node(s) x 4 GPU(s) = 4" in err
    assert len(err.strip().splitlines()) == 1
    assert not (paper / "runs").exists()


def test_sweep_preflight_prints_every_run_and_the_total(paper, capsys):
    f = write(paper / "s.yaml")
    assert sw.main([f, "--preflight", "--launcher", "slurm", "--gpus-per-node", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("scope=")]
    assert len(rows) == 2 and all(" 491,520 " not in r for r in rows)   # per step: sequences
    assert all(r.split()[1] == "480" and r.split()[2] == "100,000" for r in rows)
    hours = [float(r.split()[9].replace(",", "")) for r in rows]     # the GPU-h column
    assert 100 < hours[0] < hours[1]               # global pays for its rotation
    total = [line for line in out.splitlines() if line.startswith("total:")][0]
    assert "2 run(s), 98.30B tokens" in total
    assert abs(float(total.split(" GPU-hours")[0].split()[-1].replace(",", "")) - sum(hours)) <= 1
    assert not (paper / "runs").exists()


def test_slurm_launch_refuses_on_a_preflight_error(paper, capsys):
    """40 sequences per micro-batch of math attention do not fit an A100 40 GB: the submission
    is refused (exit 2, nothing written) unless --no-preflight."""
    f = write(paper / "s.yaml", fixed={"data.init_args.batch_size": 40,
                                       "trainer.accumulate_grad_batches": 12})
    assert sw.main([f, "--launcher", "slurm", "--time", "60", "--gpu", "a100-40gb"]) == 2
    captured = capsys.readouterr()
    assert "does not fit a100-40gb" in captured.out
    assert captured.err.startswith("adamrot: error: preflight of s.yaml found 2 error(s)")
    assert "--no-preflight" in captured.err
    assert not (paper / "runs").exists()
