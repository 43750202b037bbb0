#!/usr/bin/env bash
# Issue 13's measurement: the paper's other tasks in the swarm, 3 seeds each, every participant before /
# after / control on the task's metrics (configs/segmentation.yaml by pixel and by image, configs/saliency.yaml).
# Each run is a plain `kt-swarm run` (Ray engine); dense_table.py reads their summaries and metrics.jsonl.
#   bash benchmarks/dense_tasks.sh             # runs under runs/dense_tasks/, tables in benchmarks/results/dense_tasks/
#   SEEDS="0" bash benchmarks/dense_tasks.sh   # fewer seeds
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUNS=${RUNS:-runs/dense_tasks}
OUT=benchmarks/results/dense_tasks
mkdir -p "$RUNS" "$OUT"
for seed in ${SEEDS:-0 1 2}; do
  for cell in segmentation_pixel segmentation_image saliency; do
    dir="$RUNS/$cell/seed$seed"
    [ -f "$dir/summary.json" ] && continue  # finished earlier: kept
    rm -rf "$dir"
    case $cell in
      segmentation_pixel) args=(configs/segmentation.yaml --set transfer.unit=pixel) ;;
      segmentation_image) args=(configs/segmentation.yaml --set transfer.unit=image) ;;
      saliency) args=(configs/saliency.yaml) ;;
    esac
    start=$(date +%s)
    $PY -m kt_swarm run "${args[@]}" --set seed="$seed" --out "$dir" -q
    echo "$cell seed $seed: $(( $(date +%s) - start )) s on $(nproc) cores" | tee -a "$OUT/seconds.txt"
  done
done
$PY benchmarks/dense_table.py --runs "$RUNS" --out "$OUT"
