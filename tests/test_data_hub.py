"""``adamrot prepare hub`` with bad content: exit 2, one ``adamrot: error:`` line naming the
file and line, nothing left in ``--out`` (docs/DATA.md "Bad content", issue 23)."""
from __future__ import annotations

import json

import pytest

from adamrot.prepare import main as prepare_main


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    import datasets
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("ADAMROT_CACHE", str(tmp_path / "cache"))


def good_lines(n=30):
    return [json.dumps({"text": f"document {i} " * 50}) for i in range(n)]


@pytest.mark.parametrize("bad,message", [
    (json.dumps({"body": "no text field"}), "expected a JSON object with field 'text'"),
    (json.dumps({"text": 123}), "'text' holds int, expected str"),
    ('{"text": "unterminated', "malformed JSON"),
    (None, "not valid UTF-8 text"),
])
@pytest.mark.parametrize("workers", [1, 2])
def test_bad_hub_content_is_refused_naming_file_and_line(tmp_path, capsys, bad, message,
                                                         workers):
    f = tmp_path / "data.jsonl"
    lines = good_lines()
    with open(f, "wb") as fh:
        for i, line in enumerate(lines):
            fh.write(line.encode() + b"\n")
            if i == 16:
                fh.write((bad.encode() if bad is not None else b'{"text": "caf\xe9"}') + b"\n")
    out = tmp_path / "out"
    code = prepare_main(["hub", "--hub-data-files", str(f), "--out", str(out),
                         "--workers", str(workers), "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("adamrot: error")]
    assert code == 2
    assert len(err) == 1 and f"{f} line 18: " in err[0] and message in err[0], err
    assert not out.exists()                                  # no .lock, no partial chunks


def test_refused_preparation_keeps_an_existing_directory_clean(tmp_path, capsys):
    f = tmp_path / "data.jsonl"
    f.write_text("\n".join(good_lines() + [json.dumps({"text": 5})]) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    assert prepare_main(["hub", "--hub-data-files", str(f), "--out", str(out),
                         "--no-progress"]) == 2
    assert out.is_dir() and not any(out.iterdir())
