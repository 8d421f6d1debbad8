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
python3 -m carpool_cli.main worker --model "$model" --device cuda --port "$port" \
  --log-level warning >"$out/worker.log" 2>&1 &
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
python3 -m carpool_cli.main bench serve --url "http://127.0.0.1:$port" --rates "$rates" \
  --requests "$requests" --seconds "$seconds" --drain-seconds 60 --stop-after-miss \
  --json "$out/serve.json" | tee "$out/serve.txt"
kill "$worker"
wait "$worker" 2>/dev/null || true
python3 bench/hf_serve_peer.py --model "$model" --rates "$peer_rates" --requests "$requests" \
  --seconds "$seconds" --time-limit-seconds 120 --stop-after-miss --json "$out/peer.json" \
  2>"$out/peer.log" | tee "$out/peer.txt"
