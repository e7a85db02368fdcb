#!/usr/bin/env bash
# One-shot GPU check (bench/gpu_check.py): at most 8 minutes on one H100/H200-class GPU, one JSON in
# OUT/gpu_check.json (default runs/gpu_check). Without a GPU it exits at once, saying so.
#   bash bench/gpu_check.sh [OUT]
set -u
cd "$(dirname "$0")/.."
out="${1:-runs/gpu_check}"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    mkdir -p "$out"
    echo '{"gpu": false, "skipped": "no GPU here (nvidia-smi finds none); nothing was run", "parts": {}}' >"$out/gpu_check.json"
    echo "gpu_check: no GPU here (nvidia-smi finds none); nothing was run"
    exit 0
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec timeout --signal=TERM --kill-after=15 490 "${PYTHON:-python}" bench/gpu_check.py --out "$out"
