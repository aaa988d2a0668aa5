#!/usr/bin/env bash
# Runs every CPU twin of the catalogue (docs/REPRODUCE.md), in dependency order, then the
# probes and reports. Outputs in runs/paper/cpu/ (git-ignored). Re-running skips finished
# sweep runs. Usage: bash configs/paper/run_cpu_twins.sh [step ...]   (default: all steps)
set -u
cd "$(dirname "$0")/../.."
A=${ADAMROT:-.venv/bin/adamrot}
R=runs/paper/cpu
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(fig1a orth probes appA1 appA4 appC2 svdF beta2 muon og onebeta vit resnet reports)
sweep() { $A sweep "configs/paper/cpu/$1.sweep.yaml"; }
for s in "${steps[@]}"; do
  echo "=== $s $(date +%T)"
  case $s in
    fig1a) sweep fig1a_gpt2_scopes ;;
    orth)
      for S in none outputwise global svd; do
        d=$R/neurips_update_orth/scope=$S
        [ -f "$d/done" ] && continue
        rm -rf "$d"; mkdir -p "$d"
        $A fit --config configs/paper/cpu/gpt2_tiny.yaml --config configs/paper/cpu/neurips_update_orth.yaml \
          --model.init_args.rotation.scope $S \
          --ckpt_path $R/fig1a_gpt2_scopes/scope=$S/checkpoints/last.ckpt \
          --trainer.default_root_dir "$d" > "$d.log" 2>&1 && touch "$d/done"
      done ;;
    probes)
      for S in none outputwise global svd; do
        d=$R/fig1a_gpt2_scopes/scope=$S
        [ -f "$d/probe/probe.json" ] && continue
        $A probe "$d" --device cpu --batches 50 --hessian-rows 6 --hessian-batches 4 \
          --random-directions 4 --cauchy-vectors 0 --no-progress --overwrite > "$d/probe.log" 2>&1
      done
      # per-type Hessian rows (Fig. 9 / 19-27): one row per type, global vs none
      for S in none global; do
        d=$R/fig1a_gpt2_scopes/scope=$S
        [ -f "$d/probe_types/probe.json" ] && continue
        $A probe "$d" --out "$d/probe_types" --device cpu --batches 1 --hessian-rows 7 --hessian-batches 4 \
          --row-types embedding,query,key,value,attn_out,mlp_in,mlp_out --layers 1 \
          --random-directions 2 --cauchy-vectors 0 --no-progress --overwrite > "$d/probe_types.log" 2>&1
      done ;;
    appA1) sweep appA1_block_size ;;
    appA4) sweep appA4_sgd_flash ;;
    appC2) sweep appC2_arch_aware ;;
    svdF) sweep svd_refresh ;;
    beta2) sweep appB2_beta2 ;;
    muon) sweep muon ;;
    og) sweep og_optimizers ;;
    onebeta) sweep og_one_beta ;;
    vit) sweep fig1b_vit_scopes ;;
    resnet) sweep appC1_resnet50_scopes ;;
    reports) .venv/bin/python configs/paper/cpu/summarize.py ;;
  esac
done
