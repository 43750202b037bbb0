#!/usr/bin/env bash
# benchmarks/step_time.py on the lent GPU machine, for the two GPU configs in benchmarks/configs/.
# That machine has torch and timm but no Ray, no network and no dataset: run benchmarks/prepare_device.sh
# here first, then this script there with `.device` carried; results land in $OUT (default /tmp/kt_bench).
# Extra arguments go to step_time.py (e.g. --steps 2 for a dry run on a CPU machine).
set -uo pipefail
out=${OUT:-/tmp/kt_bench}
mkdir -p "$out"
python3 -c 'import ray' 2>/dev/null || python3 -m pip install -q --no-index --find-links .device/wheels ray || exit 1
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 KT_SWARM_CACHE=/tmp/kt_cache
[ -d .device/fmnist ] && export KT_SWARM_DATA=$PWD/.device/fmnist
gpu=()
if nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; then
  gpu=(--set device=cuda)  # fail loudly rather than time a CPU fallback
  # timm 1.0.29 + torch 2.11 on the lent H200: in these runs scaled_dot_product_attention returned None
  # inside timm's Attention (a standalone check of the same model passed), so ViTs use timm's unfused
  # attention here: both engines run the same kernels; absolute ViT times are higher than fused ones.
  export TIMM_FUSED_ATTN=${TIMM_FUSED_ATTN:-0}
fi
for c in vit_pair_224:0.5 four_models_224:0.25; do
  name=${c%%:*}
  share=()
  [ ${#gpu[@]} -gt 0 ] && share=(--set resources.gpus_per_participant=${c##*:} --set placement.timeout_s=30)
  timeout 240 python3 benchmarks/step_time.py --config benchmarks/configs/$name.yaml "${gpu[@]}" "${share[@]}" \
    --out "$out/$name" "$@" > "$out/$name.log" 2>&1
  echo "== $name: exit $?"
  tail -32 "$out/$name.log"
done
