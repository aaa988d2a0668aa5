"""The report and a run's identity and record (docs/RUNS.md): copies of one run directory
(same ``run.json`` id) count once, with a warning; a run whose hyper-parameters changed
mid-run (``resumes.jsonl``) is labelled by its starting config plus † and the change."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from adamrot.report.events import load_runs
from adamrot.report.labels import auto_label_keys, group_runs
from adamrot.runs import create_run_record


def make_run(root: Path, lr: float, seed: int, losses=(4.5, 4.2, 4.1)) -> Path:
    root.mkdir(parents=True)
    w = SummaryWriter(str(root))
    for i, v in enumerate(losses):
        w.add_scalar("val/loss", v, (i + 1) * 10)
    w.close()
    (root / "config.yaml").write_text(yaml.safe_dump({
        "seed_everything": seed, "trainer": {"max_steps": 30},
        "model": {"init_args": {"optimizer": {"init_args": {"lr": lr}}}}}))
    create_run_record(root)
    return root


def test_a_copied_run_counts_once(tmp_path):
    a = make_run(tmp_path / "runs" / "lr=0.01", 0.01, 1337)
    make_run(tmp_path / "runs" / "lr=0.001", 0.001, 1337)
    shutil.copytree(a, tmp_path / "runs" / "lr=0.01.bak")
    with pytest.warns(UserWarning, match=r"lr=0.01.bak: a copy of .*lr=0.01 \(same run id "
                                         r"[0-9a-f]{32} in run.json\); counted once"):
        runs = load_runs([tmp_path / "runs"])
    assert sorted(r.name for r in runs) == ["lr=0.001", "lr=0.01"]
    cells = group_runs(runs, auto_label_keys(runs))
    assert [len(c.runs) for c in cells] == [1, 1]          # one seed each, not two copies


def test_run_id_is_written_once(tmp_path):
    first = create_run_record(tmp_path, note="a")
    again = create_run_record(tmp_path, note="b")
    assert again == first and json.loads((tmp_path / "run.json").read_text()) == first


def test_a_run_changed_mid_run_is_marked_with_the_change(tmp_path):
    make_run(tmp_path / "runs" / "a", 0.003, 1)
    b = make_run(tmp_path / "runs" / "b", 0.003, 2)
    make_run(tmp_path / "runs" / "c", 0.001, 1)
    with open(b / "resumes.jsonl", "w") as f:
        f.write(json.dumps({"step": 20, "changes": {"model.optimizer.lr": [0.003, 0.001],
                                                    "trainer.max_steps": [20, 30]}}) + "\n")
        f.write('{"step": 25, "chan')                         # a torn last line is skipped
    runs = load_runs([tmp_path / "runs"])
    labels = sorted(c.label for c in group_runs(runs, auto_label_keys(runs)))
    assert labels == ["lr=0.001", "lr=0.003", "lr=0.003 † lr 0.003→0.001 at step 20"], labels
