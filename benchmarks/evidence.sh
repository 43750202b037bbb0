#!/usr/bin/env bash
# The "When does transfer help?" study (issue 11): one axis at a time from the quickstart, 3 seeds per
# cell, every arm beside the CE-only control (and self-training where a pool of unlabelled data is used).
# Each cell records test (reported) and validation (chosen on) accuracy: benchmarks/results/evidence/<cell>.{json,md}.
#   bash benchmarks/evidence.sh CELL...      (no argument: every cell, in order; hours on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=benchmarks/results/evidence
arms() { $PY benchmarks/quickstart_arms.py --split test --seeds 0 1 2 --out "$OUT/$1" "${@:2}"; }

# Three transfer epochs at Adam 3e-4 with a cosine schedule: where planning saw the weak gain and the strong lose.
lead=(--set transfer.epochs=3 --set 'participants.*.lr=3e-4' --set transfer.schedule=cosine)
STRONG_WEAK='best:transfer.strategy=best best_trusted:transfer.trusted_teachers=true best_calibrated:transfer.calibrate=true
kl_dp:transfer.strategy=kl_dp kl_dp_trusted:transfer.strategy=kl_dp,transfer.trusted_teachers=true better:transfer.strategy=better
better_trusted:transfer.strategy=better,transfer.trusted_teachers=true'

cell() {
  case "$1" in
    lead)        arms lead "${lead[@]}" $(printf -- '--arm %s ' $STRONG_WEAK) ;;
    disjoint)    arms disjoint --set zoo.disjoint=true "${lead[@]}" --arm best --arm best_trusted:transfer.trusted_teachers=true \
                   --arm kl_dp:transfer.strategy=kl_dp ;;
    labels_1k|labels_3k|labels_10k)
                 n=${1#labels_}; n=${n%k}000
                 arms "$1" --set data.transfer_samples=$n "${lead[@]}" --arm best --arm best_trusted:transfer.trusted_teachers=true \
                   --arm kl_dp:transfer.strategy=kl_dp ;;
    pool)        arms pool --set data.unlabelled_fraction=0.9 "${lead[@]}" --arm self_training --arm best --arm better:transfer.strategy=better \
                   --arm dml:transfer.strategy=dml --arm kl_dp:transfer.strategy=kl_dp \
                   --arm best_calibrated:transfer.calibrate=true,transfer.trusted_teachers=true ;;
    *) echo "unknown cell $1" >&2; exit 2 ;;
  esac
}
mkdir -p "$OUT"
for one in ${@:-lead disjoint labels_1k labels_3k labels_10k pool}; do
  start=$(date +%s)
  cell "$one"
  echo "$one: $(( $(date +%s) - start )) s on $(nproc) cores" | tee -a "$OUT/seconds.txt"
done
