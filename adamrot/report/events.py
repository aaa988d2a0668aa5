"""Reading runs: TensorBoard scalars, the saved ``config.yaml`` and whether a run is complete.

A directory with event files directly inside is a run; a sweep directory expands to the runs of
its ``index.json``; any other directory to every directory below it holding event files.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import yaml

MAX_STEPS_KEY = "trainer.max_steps"


class ReportError(ValueError):
    """Bad input to the report (exit 2)."""


@dataclass(eq=False)
class RunData:
    """One training run: flat config and scalar curves ``tag -> (steps, values)``.

    ``has_config`` is False when the run directory had no ``config.yaml``."""

    name: str
    config: dict[str, Any]
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]
    path: str = ""
    status: str | None = None
    has_config: bool = True
    data: dict[str, Any] | None = None      # the run's data.json (prepared key, val digest)
    run_id: str | None = None               # run.json's id (copies of a run share it)
    #: hyper-parameter changes applied mid-run (resumes.jsonl): ``[(step, key, old, new)]``
    changes: list[tuple[int, str, Any, Any]] = field(default_factory=list)

    def curve(self, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
        for t in (tag, tag + "_step", tag + "_epoch"):
            c = self.scalars.get(t)
            if c is not None and len(c[0]):
                return c
        return None

    def truncated(self, tag: str) -> int | None:
        """The last logged step of ``tag`` when the curve stops before the run's
        ``trainer.max_steps`` (one more logging period would still fit), else None."""
        c = self.curve(tag)
        ms = self.config.get(MAX_STEPS_KEY)
        if c is None or not isinstance(ms, int) or isinstance(ms, bool) or ms <= 0:
            return None
        steps = c[0]
        last = int(steps[-1])
        period = int(steps[-1] - steps[-2]) if len(steps) > 1 else last + 1
        return last if last + max(period, 1) <= ms - 1 else None


def make_run(name: str, config: dict[str, Any] | None,
             curves: dict[str, Iterable[tuple[float, float]] | tuple[Sequence, Sequence]],
             path: str = "", status: str | None = None) -> RunData:
    """A :class:`RunData` from a nested (or flat) config and curves given as
    ``[(step, value), ...]`` or ``(steps, values)``."""
    sc: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for tag, c in curves.items():
        if isinstance(c, tuple) and len(c) == 2 and not np.isscalar(c[0]):
            steps, vals = c
        else:
            pts = list(c)
            steps, vals = [p[0] for p in pts], [p[1] for p in pts]
        sc[tag] = clean_curve(steps, vals)
    return RunData(name=name, config=flatten_config(config or {}), scalars=sc, path=path,
                   status=status, has_config=config is not None)


def clean_curve(steps: Sequence, vals: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Sort by step; for repeated steps keep the last value given (a resumed run)."""
    d: dict[int, float] = {}
    for s, v in zip(steps, vals):
        d[int(s)] = float(v)
    ks = sorted(d)
    return np.asarray(ks, dtype=np.int64), np.asarray([d[k] for k in ks], dtype=np.float64)


def flatten_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"a.b.c": leaf}`` (lists and empty dicts are leaves)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten_config(v, key))
        else:
            out[key] = v
    return out


def _has_events(d: Path) -> bool:
    try:
        return any("tfevents" in p.name and p.is_file() for p in d.iterdir())
    except OSError:
        return False


def find_event_dirs(root: Path) -> list[Path]:
    """``root`` if it has event files, else every directory below it that has (hidden
    directories and ``checkpoints`` skipped), sorted."""
    if _has_events(root):
        return [root]
    out = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "checkpoints")
        p = Path(dirpath)
        if _has_events(p):
            out.append(p)
            dirnames[:] = []
    return out


def expand_inputs(paths: Sequence[str | os.PathLike]) -> list[tuple[Path, Path, str | None]]:
    """-> ``[(event_dir, run_root, status)]`` for run / sweep / parent directories."""
    out: list[tuple[Path, Path, str | None]] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ReportError(f"not a directory: {p}")
        if _has_events(p):
            out.append((p, p, None))
            continue
        idx = p / "index.json"
        if idx.is_file():
            try:
                index = json.loads(idx.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ReportError(f"{idx}: not a sweep index ({e})") from None
            for e in index.get("runs", []):
                d = p / e["name"]
                ev = find_event_dirs(d) if d.is_dir() else []
                if not ev:
                    warnings.warn(f"{d}: no TensorBoard event files (status "
                                  f"{e.get('status')}); skipped")
                    continue
                out.extend((x, d, e.get("status")) for x in ev)
            continue
        ev = find_event_dirs(p)
        if not ev:
            warnings.warn(f"{p}: no TensorBoard event files found; skipped")
        out.extend((x, x, None) for x in ev)
    return out


def _accumulator(event_dir: str | os.PathLike, **guidance: int):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(event_dir), size_guidance={"scalars": 0, "tensors": 0, **guidance})
    ea.Reload()
    return ea


def read_scalars(event_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All scalar tags of the event files in ``event_dir`` (all points; a step logged twice
    keeps the later value)."""
    ea = _accumulator(event_dir)
    tags = ea.Tags()
    out = {}
    for tag in tags.get("scalars", []):
        evs = ea.Scalars(tag)
        out[tag] = clean_curve([e.step for e in evs], [e.value for e in evs])
    # TF2-style scalar summaries (stored as tensors with the "scalars" plugin)
    for tag in tags.get("tensors", []):
        if tag in out:
            continue
        try:
            if ea.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
                continue
            from tensorboard.util import tensor_util

            evs = ea.Tensors(tag)
            vals = [float(tensor_util.make_ndarray(e.tensor_proto).item()) for e in evs]
        except Exception:  # noqa: BLE001 - not a scalar after all
            continue
        out[tag] = clean_curve([e.step for e in evs], vals)
    return out


def read_last_histogram(event_dir: str | os.PathLike, tag: str) -> dict[str, Any] | None:
    """The last logged histogram of ``tag``: step, mean, sd, bucket limits and counts."""
    if not Path(event_dir).is_dir() or not _has_events(Path(event_dir)):
        return None
    ea = _accumulator(event_dir, histograms=0)
    if tag not in ea.Tags().get("histograms", []):
        return None
    h = ea.Histograms(tag)[-1]
    hv = h.histogram_value
    mean = hv.sum / hv.num
    sd = max(0.0, hv.sum_squares / hv.num - mean ** 2) ** 0.5
    return {"step": int(h.step), "mean": float(mean), "sd": float(sd),
            "limits": list(hv.bucket_limit), "counts": list(hv.bucket)}


def read_config(event_dir: Path, run_root: Path | None = None) -> dict[str, Any] | None:
    """Flattened ``config.yaml`` (``config.prev.yaml`` as fallback) from ``event_dir`` or its
    parents up to ``run_root``; None when there is none."""
    d = event_dir.resolve()
    stop = (run_root or event_dir).resolve()
    while True:
        for name in ("config.yaml", "config.prev.yaml"):
            f = d / name
            if f.is_file():
                try:
                    cfg = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
                except (OSError, yaml.YAMLError) as e:
                    raise ReportError(f"{f}: cannot read ({e})") from None
                return flatten_config(cfg) if isinstance(cfg, dict) else None
        if d == stop or d.parent == d or stop not in d.parents:
            return None
        d = d.parent


def load_runs(paths: Sequence[str | os.PathLike]) -> list[RunData]:
    """Every run under ``paths``. A run without ``config.yaml`` keeps an empty config
    (``has_config=False``); the labelling decides what to do with it."""
    runs, where = [], []
    for ev, root, status in expand_inputs(paths):
        cfg = read_config(ev, root)
        name = root.name if ev == root else f"{root.name}/{ev.relative_to(root)}"
        run_id = read_run_id(root)
        runs.append(RunData(name=name, config=cfg or {}, scalars=read_scalars(ev),
                            path=str(root), status=status, has_config=cfg is not None,
                            data=read_data_identity(root), run_id=run_id,
                            changes=read_changes(root)))
        where.append(str(ev.relative_to(root)))
    if not runs:
        raise ReportError("no runs with TensorBoard event files found in "
                          + ", ".join(map(str, paths)))
    runs = collapse_copies(runs, where)
    warn_mixed_validation(runs)
    return runs


RUN_FILE = "run.json"
RESUMES_FILE = "resumes.jsonl"
#: keys of resumes.jsonl changes that change what a run measures (trainer settings do not)
HPARAM_PREFIXES = ("model.", "data.", "seed_everything")


def read_run_id(run_root: Path) -> str | None:
    """The id in the run's ``run.json`` (written once when ``adamrot fit`` created the run),
    None for runs created before run ids."""
    try:
        rec = json.loads((Path(run_root) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rid = rec.get("run_id") if isinstance(rec, dict) else None
    return str(rid) if rid else None


def read_changes(run_root: Path) -> list[tuple[int, str, Any, Any]]:
    """The hyper-parameter changes applied on resume (``resumes.jsonl``): model, data and
    seed keys and a changed data identity, as ``(step, key, old, new)`` in order."""
    out: list[tuple[int, str, Any, Any]] = []
    try:
        lines = (Path(run_root) / RESUMES_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue                                   # a torn last line
        if not isinstance(rec, dict):
            continue
        step = int(rec.get("step") or 0)
        for k, v in (rec.get("changes") or {}).items():
            if k.startswith(HPARAM_PREFIXES) and isinstance(v, list) and len(v) == 2:
                out.append((step, k, v[0], v[1]))
        for k, v in (rec.get("data_identity") or {}).items():
            if isinstance(v, list) and len(v) == 2:
                out.append((step, f"data.json {k}", v[0], v[1]))
    return out


def collapse_copies(runs: list[RunData], where: Sequence[str] = ()) -> list[RunData]:
    """One run per run id (``run.json``): copies of a run directory (``cp -a RUN RUN.bak``)
    are one run, not another seed. Keeps the copy with the longest curves (then the first),
    and warns naming the others."""
    where = list(where) or [""] * len(runs)
    by_id: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(runs):
        if r.run_id:
            by_id.setdefault((r.run_id, where[i]), []).append(i)
    drop: set[int] = set()
    for (rid, _), idx in by_id.items():
        if len(idx) < 2:
            continue

        def length(i: int) -> int:
            return max((int(c[0][-1]) for c in runs[i].scalars.values() if len(c[0])), default=-1)
        keep = max(idx, key=lambda i: (length(i), -i))
        others = [runs[i].path or runs[i].name for i in idx if i != keep]
        warnings.warn(f"{', '.join(others)}: a copy of {runs[keep].path or runs[keep].name} "
                      f"(same run id {rid} in {RUN_FILE}); counted once")
        drop.update(i for i in idx if i != keep)
    return [r for i, r in enumerate(runs) if i not in drop]


def read_data_identity(run_root: Path) -> dict[str, Any] | None:
    """The run's ``data.json`` (written by ``adamrot fit``), None for older runs."""
    try:
        return json.loads((run_root / "data.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def warn_mixed_validation(runs: Sequence[RunData]) -> dict[str, list[str]]:
    """Runs grouped by validation digest; warns when there is more than one group (their
    ``val/`` numbers were measured on different validation windows and do not compare)."""
    groups: dict[str, list[str]] = {}
    for r in runs:
        if r.data and r.data.get("val_digest"):
            groups.setdefault(r.data["val_digest"], []).append(r.name)
    if len(groups) > 1:
        desc = "; ".join(f"{d}: {len(n)} run(s), e.g. {n[0]}" for d, n in groups.items())
        warnings.warn(f"these runs were validated on {len(groups)} different validation sets "
                      f"(data.json val_digest; {desc}): val/ numbers across them do not compare")
    return groups
