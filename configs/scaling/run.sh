#!/usr/bin/env bash
# The rotation-penalty scaling series (configs/scaling/make_sweeps.py; our own experiment) as one
# resumable command: every tune sweep, then the seed sweeps at each scope's best lr.
#   nohup bash configs/scaling/run.sh > runs/scaling/run.log 2>&1 &
# Re-running resumes (finished runs are skipped, interrupted ones resumed). JOBS=2 runs two
# runs at once with one thread each (the 2-core machine); estimate ~2.5 h on 2 cores.
set -u
cd "$(dirname "$0")/../.."
A=${ADAMROT:-.venv/bin/adamrot}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p runs/scaling
$PY configs/scaling/make_sweeps.py tune > /dev/null || exit 2
for f in configs/scaling/tune/*.sweep.yaml; do
  echo "=== tune $f $(date +%T)"
  $A sweep "$f" --jobs "${JOBS:-2}" || { echo "sweep $f failed (rc $?)"; exit 1; }
done
$PY configs/scaling/make_sweeps.py seeds || exit 1
for f in configs/scaling/seeds/*.sweep.yaml; do
  echo "=== seeds $f $(date +%T)"
  $A sweep "$f" --jobs "${JOBS:-2}" || { echo "sweep $f failed (rc $?)"; exit 1; }
done
echo "=== done $(date +%T)"
