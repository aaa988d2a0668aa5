"""A write the storage refuses (disk full, quota, permissions) in ``prepare`` and ``sweep``
ends with one ``adamrot: error:`` line naming the file and exit 2, never a traceback
(``fit``, ``validate`` and ``probe``: tests/test_run_damage.py)."""
from __future__ import annotations

import errno

import pytest

import adamrot.prepare as prepare
import adamrot.sweep.cli as sweep_cli
from adamrot.errors import storage_error


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device", "/data/out/train/chunk-0-0.bin")


def test_storage_error_names_the_file_and_ignores_other_errors():
    msg = storage_error(OSError(errno.EDQUOT, "Disk quota exceeded", "/x/y"))
    assert msg == "cannot write /x/y: Disk quota exceeded"
    assert storage_error(OSError(errno.ENOENT, "No such file", "/x")) is None
    assert storage_error(RuntimeError("boom")) is None


def test_prepare_disk_full_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(prepare, "_prepare_text", _enospc)
    assert prepare.main(["embedded", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("adamrot: error: cannot write "
                                               "/data/out/train/chunk-0-0.bin: No space left")


def test_sweep_disk_full_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("name: s\nout_dir: runs/s\ncommand: [python, -c, 'pass']\n"
                                     "grid: {seed_everything: [0]}\n")
    monkeypatch.setattr(sweep_cli, "run_sweep", _enospc)
    assert sweep_cli.main(["s.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write /data/out/train/chunk-0-0.bin" in err[0]


def test_other_os_errors_still_raise(monkeypatch, tmp_path):
    def boom(*a, **k):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(prepare, "_prepare_text", boom)
    with pytest.raises(OSError):
        prepare.main(["embedded", "--out", str(tmp_path / "p")])
