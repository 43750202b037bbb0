#!/usr/bin/env bash
# Builds .device/ (ignored by git) for benchmarks/device_step_time.sh on the lent GPU machine, which
# has torch and timm but no Ray, no network and no dataset: Ray's wheels without the Java part
# (../shared/device/prepare-ray-wheels.sh), and the first 6,000 training and 1,000 test images of
# Fashion-MNIST as idx files (3 MB: timing needs real images, not all of them).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info && { grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo /.device/ >> .git/info/exclude; }
[ -n "$(ls .device/wheels/ray-*.whl 2>/dev/null)" ] || bash ../shared/device/prepare-ray-wheels.sh .device/wheels
python3 - "${KT_SWARM_DATA:-/usr/share/datasets/fashion-mnist}" .device/fmnist <<'PY'
import gzip, os, sys

src, dst = sys.argv[1:]
os.makedirs(dst, exist_ok=True)
for name, n in [("train-images-idx3-ubyte", 6000), ("train-labels-idx1-ubyte", 6000),
                ("t10k-images-idx3-ubyte", 1000), ("t10k-labels-idx1-ubyte", 1000)]:
    path = os.path.join(src, name)
    raw = (gzip.open(path + ".gz") if os.path.exists(path + ".gz") else open(path, "rb")).read()
    ndim = raw[3]  # idx header: 2 zero bytes, type, ndim, then ndim big-endian uint32 sizes
    sizes = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    item = 1
    for s in sizes[1:]:
        item *= s
    start = 4 + 4 * ndim
    with gzip.open(os.path.join(dst, name + ".gz"), "wb") as f:
        f.write(raw[:4] + n.to_bytes(4, "big") + raw[8:start] + raw[start : start + n * item])
PY
du -sh .device/*
