#!/usr/bin/env bash
# Issue 12's measurement: three ImageNet EfficientNet-Lites (PyPI) teaching each other on elpv solar cells
# (configs/real_models.yaml), 3 seeds, every participant before / after / control, complementary knowledge at
# the start; the arms: the paper's partition (best, weight 1: what validation chose, the config's setting) and
# the quickstart's (trusted teachers, weight 2). Test reported, validation recorded and chosen on.
#   bash benchmarks/real_models.sh            # the 2-core CPU sizes of the config (3564 s there, seed 0 on a shared machine)
#   bash benchmarks/real_models.sh --gpu      # the models' own input sizes (224/240/260), 6 epochs each step
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=benchmarks/results/real_models
[ -d data/real_models ] || $PY examples/real_models/prepare.py
sizes=()
if [ "${1:-}" = --gpu ]; then
  OUT=$OUT/gpu
  sizes=(--set 'participants.*.input_size=null' --set zoo.epochs=6 --set transfer.epochs=6)
fi
mkdir -p "$OUT"
start=$(date +%s)
$PY benchmarks/quickstart_arms.py --config configs/real_models.yaml --split test --seeds 0 1 2 --out "$OUT/elpv" "${sizes[@]}" \
  --arm best:transfer.trusted_teachers=false,transfer.weight=1 --arm quickstart:transfer.trusted_teachers=true,transfer.weight=2
$PY benchmarks/evidence_table.py --dir "$OUT"
echo "elpv: $(( $(date +%s) - start )) s on $(nproc) cores" | tee -a "$OUT/seconds.txt"
