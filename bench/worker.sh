# shellcheck shell=bash
# Sourced by the GPU scripts: start_worker LOG PORT [carpool worker options...] starts a worker
# in the background (its pid in $worker, killed when the script exits) and returns once it is
# ready, or exits at once with the end of its log if it dies while loading.
start_worker() {
  local log=$1 port=$2
  shift 2
  python3 -m carpool_cli.main worker --device cuda --port "$port" --log-level warning "$@" \
    >"$log" 2>&1 &
  worker=$!
  trap 'kill "$worker" 2>/dev/null || true' EXIT
  until python3 -c "import httpx, sys; sys.exit(httpx.get('http://127.0.0.1:$port/readyz').status_code != 200)" 2>/dev/null; do
    if ! kill -0 "$worker" 2>/dev/null; then
      tail -20 "$log" >&2
      exit 1
    fi
    sleep 2
  done
}

stop_worker() {
  kill "$worker" 2>/dev/null || true
  wait "$worker" 2>/dev/null || true
}
