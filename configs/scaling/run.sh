#!/usr/bin/env bash
# The rotation-penalty scaling series (configs/scaling/make_sweeps.py; our own experiment) as one
# resumable command: every tune sweep, then the seed sweeps at each scope's best lr.
#   nohup bash configs/scaling/run.sh > runs/scaling/run.log 2>&1 &
# Re-running resumes (finished runs are skipped, interrupted ones resumed). JOBS=2 runs two
# runs at once with one thread each (the 2-core machine); estimate ~2.5 h on 2 cores. Finished
# runs are kept with the repository (docs/evidence/scaling: events, configs, indexes; no
# checkpoints) after every sweep and restored first, so a fresh clone continues.
#   bash configs/scaling/run.sh tune/w32_l2_tpp5 ...    # only these sweep files
set -u
cd "$(dirname "$0")/../.."
A=${ADAMROT:-.venv/bin/adamrot}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
EV="$PY configs/paper/cpu/evidence.py --runs runs/scaling --evidence docs/evidence/scaling"
mkdir -p runs/scaling
[ -d docs/evidence/scaling ] && { $EV restore || exit 1; }
keep() { $EV archive > /dev/null || exit 1; }
if [ $# -gt 0 ]; then
  for f in "$@"; do $A sweep "configs/scaling/$f.sweep.yaml" --jobs "${JOBS:-2}" || exit 1; keep; done
  exit 0
fi
$PY configs/scaling/make_sweeps.py tune > /dev/null || exit 2
for f in configs/scaling/tune/*.sweep.yaml; do
  echo "=== tune $f $(date +%T)"
  $A sweep "$f" --jobs "${JOBS:-2}" || { echo "sweep $f failed (rc $?)"; exit 1; }
  keep
done
$PY configs/scaling/make_sweeps.py seeds || exit 1
for f in configs/scaling/seeds/*.sweep.yaml; do
  echo "=== seeds $f $(date +%T)"
  $A sweep "$f" --jobs "${JOBS:-2}" || { echo "sweep $f failed (rc $?)"; exit 1; }
  keep
done
echo "=== done $(date +%T)"
