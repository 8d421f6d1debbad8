#!/usr/bin/env bash
# The worker's GPU benchmarks in one go, so that every number faces the same machine: the fused
# kernels checked against the torch reference, decode speed (bench-1b, bench-8b) beside the
# Hugging Face static-cache peer, prefill (one-shot and at the engine's chunk) beside the Hugging
# Face SDPA peer, and one 32k-token prompt served over HTTP. See docs/benchmarks.md.
# Usage: bench/gpu_worker.sh OUT_DIR [HF_DECODE_ANCHOR_PY]
set -euo pipefail
out=${1:?usage: bench/gpu_worker.sh OUT_DIR [HF_DECODE_ANCHOR_PY]}
anchor=${2:-}
port=8124
mkdir -p "$out"
# shellcheck source=bench/worker.sh
. "$(dirname "$0")/worker.sh"
python3 -m carpool_worker.bench --model bench-1b --check --batches 1,8,16,32,64,128 --steps 100 \
  >"$out/decode-1b.jsonl"
python3 -m carpool_worker.bench --model bench-8b --batches 1,8,16,64,128 --steps 50 \
  >"$out/decode-8b.jsonl"
if [ -n "$anchor" ]; then
  python3 "$anchor" --shape 1b --impls static --batches 1,8,32,64,128 >"$out/hf-decode-1b.jsonl"
fi
python3 -m carpool_worker.bench_prefill --model bench-8b \
  --lengths 1024,2048,4096,8000,16384,32000 >"$out/prefill.jsonl"
# One 32k-token prompt through the whole worker (admission by blocks, chunked prefill, decode),
# and one a token too long, which must get a 400.
start_worker "$out/worker-32k.log" "$port" --model bench-8b --max-context 32768
python3 - "$port" >"$out/long-prompt.json" <<'PY'
import json
import sys
import time

import httpx

url = f"http://127.0.0.1:{sys.argv[1]}/v1/completions"
results = []
for tokens in (32000, 32768):
    body = {"model": "bench-8b", "prompt": [(7 * i + 3) % 120000 + 1 for i in range(tokens)],
            "max_tokens": 16, "temperature": 0}
    start = time.monotonic()
    r = httpx.post(url, json=body, timeout=300)
    results.append({"prompt_tokens": tokens, "status": r.status_code,
                    "seconds": round(time.monotonic() - start, 3),
                    "body": r.json().get("usage") if r.status_code == 200 else r.json()})
print(json.dumps(results))
PY
stop_worker
cat "$out/long-prompt.json"
