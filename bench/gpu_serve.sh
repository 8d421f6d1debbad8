#!/usr/bin/env bash
# The serving sweep on one GPU, carpool and its peer in one go on the same requests: carpool's
# worker serving `carpool bench serve` (the code trace's token mix, Poisson, prompts capped at
# 8k), then, with the worker stopped and its memory freed, transformers' continuous batching on
# the same arrivals (bench/hf_serve_peer.py). See docs/benchmarks.md, "Serving sweep".
# Usage: bench/gpu_serve.sh OUT_DIR [MODEL] [RATES] [REQUESTS] [SECONDS] [PEER_RATES]
set -euo pipefail
out=${1:?usage: bench/gpu_serve.sh OUT_DIR [MODEL] [RATES] [REQUESTS] [SECONDS] [PEER_RATES]}
model=${2:-bench-8b}
rates=${3:-1,2,4,8,12,16}
requests=${4:-64}
seconds=${5:-60}
peer_rates=${6:-$rates}
port=8125
mkdir -p "$out"
# shellcheck source=bench/worker.sh
. "$(dirname "$0")/worker.sh"
start_worker "$out/worker.log" "$port" --model "$model"
python3 -m carpool_cli.main bench serve --url "http://127.0.0.1:$port" --rates "$rates" \
  --requests "$requests" --seconds "$seconds" --drain-seconds 60 --stop-after-miss \
  --json "$out/serve.json" | tee "$out/serve.txt"
stop_worker
python3 bench/hf_serve_peer.py --model "$model" --rates "$peer_rates" --requests "$requests" \
  --seconds "$seconds" --time-limit-seconds 120 --stop-after-miss --json "$out/peer.json" \
  2>"$out/peer.log" | tee "$out/peer.txt"
