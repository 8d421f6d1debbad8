#!/usr/bin/env bash
# The real-GPU fidelity run: measure the model's profile on this GPU, serve the model with the
# same slots and context, and compare `carpool fidelity`'s simulated figures with the served
# ones on the same arrivals (the code trace's token mix, Poisson, at 25/50/75% of saturation).
# Usage: bench/gpu_fidelity.sh OUT_DIR [MODEL] [SLOTS] [CONTEXT] [SECONDS_PER_LOAD]
set -euo pipefail
out=${1:?usage: bench/gpu_fidelity.sh OUT_DIR [MODEL] [SLOTS] [CONTEXT] [SECONDS_PER_LOAD]}
model=${2:-bench-8b}
slots=${3:-64}
context=${4:-8704}
seconds=${5:-45}
port=8123
mkdir -p "$out"
# shellcheck source=bench/worker.sh
. "$(dirname "$0")/worker.sh"
python3 -m carpool_cli.main profile --model "$model" --device cuda \
  --max-batch-size "$slots" --max-context "$context" \
  --batch-sizes 1,2,4,8,16,32,64 --contexts 128,512,1024,2048,4096,8192 \
  --pareto-batch-sizes 1,4,16,64 --out "$out/profile.json" 2>"$out/profile.log"
start_worker "$out/worker.log" "$port" --model "$model" \
  --max-batch-size "$slots" --max-context "$context"
python3 -m carpool_cli.main fidelity --url "http://127.0.0.1:$port" --profile "$out/profile.json" \
  --duration "$seconds" --saturation-requests 150 | tee "$out/fidelity.jsonl"
# The worker's own view of the run (step durations, batch sizes) for diagnosis.
python3 -c "import httpx; print(httpx.get('http://127.0.0.1:$port/metrics').text)" >"$out/metrics.txt"
