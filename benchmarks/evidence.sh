#!/usr/bin/env bash
# The "When does transfer help?" study (issue 11): one axis at a time from a common base, 3 seeds per
# cell, every arm beside the CE-only control (and self-training where a pool of unlabelled data is used).
# Each cell records test (reported) and validation (chosen on) accuracy: benchmarks/results/evidence/<cell>.{json,md}.
#   bash benchmarks/evidence.sh CELL...      (no argument: every cell, in order; hours on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=benchmarks/results/evidence
arms() { $PY benchmarks/quickstart_arms.py --split test --seeds 0 1 2 --out "$OUT/$1" "${@:2}"; }

# The base: 10k labelled transfer images, three epochs at Adam 3e-4 with a cosine schedule. The same
# number of steps as the old quickstart's one epoch over 30k, so a cell costs what the quickstart does;
# planning saw the weak gain and the strong lose here. Later --set flags win over earlier ones.
# Spelled out in full, so that a cell measures the same thing whatever configs/quickstart.yaml says.
base=(--set data.transfer_samples=10000 --set transfer.epochs=3 --set 'participants.*.lr=3e-4' --set transfer.schedule=cosine
      --set transfer.trusted_teachers=false --set transfer.strategy=best --set transfer.weight=1 --set transfer.temperature=1
      --set transfer.detach_teacher=true --set transfer.calibrate=false)
STRONG_WEAK='best:transfer.strategy=best best_trusted:transfer.trusted_teachers=true best_calibrated:transfer.calibrate=true
kl_dp:transfer.strategy=kl_dp kl_dp_trusted:transfer.strategy=kl_dp,transfer.trusted_teachers=true better:transfer.strategy=better
better_trusted:transfer.strategy=better,transfer.trusted_teachers=true'
# The setting chosen on validation from labels_10k (trusted teachers), then its temperature, weight and
# gradient mode around it: the "around" cell. Weight 2 led there on validation: the quickstart's setting.
CHOSEN=transfer.trusted_teachers=true
QUICKSTART=$CHOSEN,transfer.weight=2
AROUND="chosen:$CHOSEN chosen_T2:$CHOSEN,transfer.temperature=2 chosen_T4:$CHOSEN,transfer.temperature=4
chosen_w0.5:$CHOSEN,transfer.weight=0.5 chosen_w2:$CHOSEN,transfer.weight=2 chosen_exact:$CHOSEN,transfer.detach_teacher=false"
# Issue 11 asks temperature and weight for the best two settings: the second on validation at 10k was
# `better` with trusted teachers (+0.06 +- 0.02, level with the chosen one): the "around_better" cell.
SECOND=transfer.strategy=better,transfer.trusted_teachers=true
AROUND_BETTER="second:$SECOND second_T2:$SECOND,transfer.temperature=2 second_T4:$SECOND,transfer.temperature=4
second_w0.5:$SECOND,transfer.weight=0.5 second_w2:$SECOND,transfer.weight=2"
armlist() { printf -- '--arm %s ' $1; }

cell() {
  case "$1" in
    labels_1k|labels_3k|labels_10k)
                 n=${1#labels_}; n=${n%k}000
                 arms "$1" "${base[@]}" --set data.transfer_samples=$n $(armlist "$STRONG_WEAK") ;;
    # Three times the steps of labels_10k: only the arms that mattered there (an hour on 2 cores even so).
    labels_30k)  arms labels_30k "${base[@]}" --set data.transfer_samples=30000 \
                   $(armlist "best quickstart:$QUICKSTART kl_dp_trusted:transfer.strategy=kl_dp,transfer.trusted_teachers=true") ;;
    # Members of comparable accuracy with different inductive biases (zoo val: ResNet 86.8, mixer 85.3, ViT 82.4
    # at seed 0, where the quickstart's are 88.9, 85.3, 79.1): a narrower ResNet and a wider, deeper ViT.
    balanced)    arms balanced "${base[@]}" --set 'participants.0.model_args={channels: [8, 16, 32, 64], stem_width: 8}' \
                   --set 'participants.1.model_args={img_size: 28, patch_size: 7, embed_dim: 128, depth: 4, num_heads: 4}' \
                   $(armlist "best quickstart:$QUICKSTART kl_dp_trusted:transfer.strategy=kl_dp,transfer.trusted_teachers=true") ;;
    disjoint)    arms disjoint --set zoo.disjoint=true "${base[@]}" $(armlist "best quickstart:$QUICKSTART kl_dp:transfer.strategy=kl_dp") ;;
    pool)        arms pool --set data.unlabelled_fraction=0.9 "${base[@]}" $(armlist "self_training best better:transfer.strategy=better
                   dml:transfer.strategy=dml kl_dp:transfer.strategy=kl_dp quickstart:$QUICKSTART quickstart_calibrated:$QUICKSTART,transfer.calibrate=true") ;;
    around)      arms around "${base[@]}" $(armlist "$AROUND") ;;
    around_better) arms around_better "${base[@]}" $(armlist "$AROUND_BETTER") ;;
    # The quickstart's budget (3 minutes warm on 2 cores) holds about 430 steps per arm; the setting meets
    # the bar at 30k x 3 epochs (702). The same setting at scales under the budget: more distinct images or
    # more passes (234, 312, 351 steps per arm; 10k x 3, the old default, again on the same zoo as the
    # others). Chosen on validation, then reported on test.
    budget_30k_1ep|budget_20k_2ep|budget_15k_3ep|budget_10k_3ep)
                 n=${1#budget_}; n=${n%%k_*}000; e=${1##*_}; e=${e%ep}
                 arms "$1" "${base[@]}" --set data.transfer_samples=$n --set transfer.epochs=$e $(armlist "quickstart:$QUICKSTART") ;;
    # Held out: handwritten digits (examples/digits/prepare.py), never looked at while choosing.
    digits)      [ -d data/digits ] || $PY examples/digits/prepare.py --out data/digits
                 arms digits --config configs/digits.yaml "${base[@]}" $(armlist "best chosen:$CHOSEN quickstart:$QUICKSTART") ;;
    # The held-out check of the quickstart's budget setting (budget_20k_2ep, chosen on validation): two
    # epochs. The digits have 4k transfer images, so only the passes change.
    digits_2ep)  [ -d data/digits ] || $PY examples/digits/prepare.py --out data/digits
                 arms digits_2ep --config configs/digits.yaml "${base[@]}" --set transfer.epochs=2 $(armlist "quickstart:$QUICKSTART") ;;
    # Selection that also considers the arm's start (issue 23): cells again under it, to set beside the
    # same cells selected among the trained epochs only (labels_1k: where most participants fell below their start).
    digits_start) [ -d data/digits ] || $PY examples/digits/prepare.py --out data/digits
                 arms digits_start --config configs/digits.yaml "${base[@]}" $(armlist "best chosen:$CHOSEN quickstart:$QUICKSTART") ;;
    labels_1k_start) arms labels_1k_start "${base[@]}" --set data.transfer_samples=1000 $(armlist "$STRONG_WEAK") ;;
    digits_2ep_start) [ -d data/digits ] || $PY examples/digits/prepare.py --out data/digits
                 arms digits_2ep_start --config configs/digits.yaml "${base[@]}" --set transfer.epochs=2 $(armlist "quickstart:$QUICKSTART") ;;
    *) echo "unknown cell $1" >&2; exit 2 ;;
  esac
}
mkdir -p "$OUT"
for one in ${@:-labels_10k around labels_1k labels_3k pool disjoint balanced digits labels_30k around_better budget_30k_1ep budget_20k_2ep budget_15k_3ep budget_10k_3ep digits_2ep}; do
  start=$(date +%s)
  cell "$one"
  echo "$one: $(( $(date +%s) - start )) s on $(nproc) cores" | tee -a "$OUT/seconds.txt"
done
