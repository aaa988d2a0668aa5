"""The environment is pinned (constraints.txt, installed by `make demo` / `make test`): every
dependency setup.cfg names has an exact version there, and the installed versions are those
(a stale or hand-modified environment fails here, not somewhere obscure)."""
from __future__ import annotations

import configparser
import importlib.metadata as md
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[_norm(name)] = version
    return pins


def _requirements() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = cfg["options"]["install_requires"].split("\n")
    reqs += cfg["options.extras_require"]["dev"].split("\n")
    names = [re.split(r"[<>=!\[; ]", r.strip())[0] for r in reqs]
    return [_norm(n) for n in names if n and not n.startswith("#")]


def test_every_requirement_is_pinned():
    pins = _pins()
    missing = [n for n in _requirements() if n not in pins]
    assert not missing, f"add exact versions to constraints.txt (make lock): {missing}"


def test_installed_versions_are_the_pinned_ones():
    drift = []
    for name, version in _pins().items():
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            continue                      # platform-specific (e.g. CUDA wheels) or optional
        if have.split("+")[0] != version:
            drift.append(f"{name} {have} (pinned {version})")
    assert not drift, "environment differs from constraints.txt: " + ", ".join(drift)
