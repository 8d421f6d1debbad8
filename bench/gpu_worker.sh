#!/usr/bin/env bash
# The worker's GPU benchmarks in one go, so that every number faces the same machine: the fused
# kernels checked against the torch reference, decode speed (bench-1b, bench-8b) beside the
# Hugging Face static-cache peer, prefill (one-shot and chunked) beside the Hugging Face SDPA
# peer, and one 32k-token prompt served over HTTP.
# Usage: bench/gpu_worker.sh OUT_DIR [ANCHORS_DIR]
set -euo pipefail
out=${1:?usage: bench/gpu_worker.sh OUT_DIR [ANCHORS_DIR]}
anchors=${2:-shared/anchors}
port=8124
mkdir -p "$out"
python3 -m carpool_worker.bench --model bench-1b --check --batches 1,8,16,32,64,128 --steps 100 \
  >"$out/decode-1b.jsonl" 2>"$out/decode-1b.log"
python3 -m carpool_worker.bench --model bench-8b --batches 1,8,16,64,128 --steps 50 \
  >"$out/decode-8b.jsonl" 2>"$out/decode-8b.log"
if [ -f "$anchors/hf_decode_anchor.py" ]; then
  python3 "$anchors/hf_decode_anchor.py" --shape 1b --impls static --batches 1,8,32,64,128 \
    >"$out/hf-decode-1b.jsonl" 2>"$out/hf-decode-1b.log" || echo "hf decode peer failed" >&2
fi
for chunk in 512 2048; do
  python3 -m carpool_worker.bench_prefill --model bench-8b --lengths 1024,2048,4096,8000,16384 \
    --chunk "$chunk" $([ "$chunk" = 512 ] || echo --no-peer) \
    >"$out/prefill-chunk$chunk.jsonl" 2>"$out/prefill-chunk$chunk.log"
done
# One 32k-token prompt through the whole worker: admission by blocks, chunked prefill, decode.
python3 -m carpool_cli.main worker --model bench-8b --device cuda --max-context 32768 \
  --port "$port" --log-level warning >"$out/worker-32k.log" 2>&1 &
worker=$!
trap 'kill "$worker" 2>/dev/null || true' EXIT
python3 - "$port" >"$out/long-prompt.json" <<'EOF'
import json, sys, time
import httpx
url = f"http://127.0.0.1:{sys.argv[1]}"
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    try:
        if httpx.get(url + "/readyz").status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(2)
results = []
for tokens in (32000, 32768):  # the longest that fits with its output, and one that does not
    body = {"model": "bench-8b", "prompt": [(7 * i + 3) % 120000 + 1 for i in range(tokens)],
            "max_tokens": 16, "temperature": 0}
    start = time.monotonic()
    r = httpx.post(url + "/v1/completions", json=body, timeout=300)
    results.append({"prompt_tokens": tokens, "status": r.status_code,
                    "seconds": round(time.monotonic() - start, 3),
                    "body": r.json() if r.status_code != 200 else r.json().get("usage")})
print(json.dumps(results))
EOF
cat "$out/long-prompt.json"
