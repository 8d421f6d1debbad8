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
python3 -m carpool_cli.main profile --model "$model" --device cuda \
  --max-batch-size "$slots" --max-context "$context" \
  --batch-sizes 1,2,4,8,16,32,64 --contexts 128,512,1024,2048,4096,8192 \
  --pareto-batch-sizes 1,4,16,64 --out "$out/profile.json" 2>"$out/profile.log"
python3 -m carpool_cli.main worker --model "$model" --device cuda \
  --max-batch-size "$slots" --max-context "$context" --port "$port" --log-level warning \
  >"$out/worker.log" 2>&1 &
worker=$!
trap 'kill "$worker" 2>/dev/null || true' EXIT
# Fail at once, with the worker's log, if it dies while loading.
until python3 -c "import httpx, sys; sys.exit(httpx.get('http://127.0.0.1:$port/readyz').status_code != 200)" 2>/dev/null; do
  if ! kill -0 "$worker" 2>/dev/null; then
    tail -20 "$out/worker.log" >&2
    exit 1
  fi
  sleep 2
done
python3 -m carpool_cli.main fidelity --url "http://127.0.0.1:$port" --profile "$out/profile.json" \
  --duration "$seconds" --saturation-requests 150 | tee "$out/fidelity.jsonl"
# The worker's own view of the run (step durations, batch sizes) for diagnosis.
python3 -c "import httpx; print(httpx.get('http://127.0.0.1:$port/metrics').text)" >"$out/metrics.txt"
