#!/usr/bin/env bash
# The one prepared GPU check (issue 7): on a lent GPU machine whose python3 already has torch, transformers and
# lightning, run every section of benchmarks/gpu_check.py in under ~8 minutes and leave gpu_check.json in $OUT.
#   OUT=/tmp/out bash benchmarks/gpu_check.sh                 # Beauty data under $ADAGRPO_DATA_ROOT (optional)
# Missing pure-Python packages (jsonargparse, omegaconf, bitsandbytes...) can be carried as wheels in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 ADAGRPO_CACHE="$OUT/cache"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT/nvidia_smi.txt"
timeout 480 python3 benchmarks/gpu_check.py --out "$OUT" --beauty-minutes "${BEAUTY_MINUTES:-3}" 2>&1 | tee "$OUT/gpu_check.log"
