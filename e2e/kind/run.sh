#!/usr/bin/env bash
# Run carpool's e2e suite on a throwaway kind cluster, with the operator installed from the
# Helm chart. What it does, what it needs and its limits: e2e/kind/README.md.
#
#   e2e/kind/run.sh [pytest arguments...]
#
# Environment (all optional):
#   CARPOOL_KIND_CLUSTER       kind cluster name (default carpool-e2e); must not exist yet
#   CARPOOL_OPERATOR_IMAGE     operator image, name:tag (default: the chart's,
#                              ghcr.io/carpool-dev/carpool-operator:<appVersion>)
#   CARPOOL_WORKER_IMAGE       worker image, name:tag (default
#                              ghcr.io/carpool-dev/carpool-worker:<appVersion>); exported to
#                              the tests
#   CARPOOL_BASE_IMAGE         Debian 12 image to build on (default: a debootstrap base, which
#                              needs root and debootstrap; see images/build.sh)
#   CARPOOL_KIND_NODE_IMAGE    kindest/node image (default: the one of your kind release)
#   CARPOOL_KIND_PROMETHEUS_IMAGE  Prometheus image (default: the one in prometheus.yaml)
#   CARPOOL_KIND_GPUS_PER_NODE fake nvidia.com/gpu per worker node (default 2)
#   CARPOOL_KIND_POD_ROUTES    auto (default), 1 or 0: route the pod CIDRs from this machine
#   CARPOOL_KIND_KEEP          1: keep the cluster (and its kubeconfig) at the end
#   PYTHON                     the Python with carpool[worker,dev] installed (default python3)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

CRDS="$ROOT/crds"
CHART="$ROOT/charts/carpool"
KIND_CONFIG="$HERE/kind-config.yaml"
PROMETHEUS_MANIFEST="$HERE/prometheus.yaml"
BUILD_IMAGES="$ROOT/images/build.sh"
APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$CHART/Chart.yaml")"

CLUSTER="${CARPOOL_KIND_CLUSTER:-carpool-e2e}"
OPERATOR_IMAGE="${CARPOOL_OPERATOR_IMAGE:-ghcr.io/carpool-dev/carpool-operator:$APP_VERSION}"
WORKER_IMAGE="${CARPOOL_WORKER_IMAGE:-ghcr.io/carpool-dev/carpool-worker:$APP_VERSION}"
NODE_IMAGE="${CARPOOL_KIND_NODE_IMAGE:-}"
PROMETHEUS_IMAGE="${CARPOOL_KIND_PROMETHEUS_IMAGE:-}"
GPUS_PER_NODE="${CARPOOL_KIND_GPUS_PER_NODE:-2}"
POD_ROUTES="${CARPOOL_KIND_POD_ROUTES:-auto}"
KEEP="${CARPOOL_KIND_KEEP:-0}"
PYTHON="${PYTHON:-python3}"

RELEASE=carpool
RELEASE_NAMESPACE=carpool-system
PROMETHEUS_NODE_PORT=30090
# Images that the e2e tests put in spec.worker.image: tagged from the worker image and loaded
# into the nodes, so the pods those tests create can start.
WORKER_ALIASES=("ghcr.io/carpool-dev/carpool:$APP_VERSION" "ghcr.io/example/carpool-worker:0.1.0")
# e2e/test_pods_and_scraping.py runs this image on the GPU nodes.
EXTRA_IMAGES=("python:3.11-slim")

say() { printf '[kind e2e] %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

for tool in docker kind kubectl helm curl "$PYTHON"; do
  command -v "$tool" >/dev/null || die "'$tool' is not on PATH (see e2e/kind/README.md)"
done
for image in "$OPERATOR_IMAGE" "$WORKER_IMAGE"; do
  [[ $image =~ ^[^:]+(:[0-9]+)?/?[^:]*:[A-Za-z0-9_.-]+$ ]] || die "image '$image' must be name:tag"
done
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  die "a kind cluster named '$CLUSTER' exists already; delete it or set CARPOOL_KIND_CLUSTER"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/carpool-kind.XXXXXX")"
export KUBECONFIG="$WORK/kubeconfig"
CREATED=0
BACKGROUND=()
ROUTES=()
SUDO=()
if [[ $(id -u) != 0 ]]; then
  SUDO=(sudo -n)
fi

# shellcheck disable=SC2317,SC2329 # run by the EXIT trap
cleanup() {
  local status=$?
  set +e
  for pid in ${BACKGROUND[@]+"${BACKGROUND[@]}"}; do
    kill "$pid" 2>/dev/null
  done
  for route in ${ROUTES[@]+"${ROUTES[@]}"}; do
    # shellcheck disable=SC2086 # "CIDR via IP": three words on purpose
    ${SUDO[@]+"${SUDO[@]}"} ip route del $route
  done
  if [[ $CREATED == 1 && $KEEP == 1 ]]; then
    say "kept cluster '$CLUSTER'; KUBECONFIG=$KUBECONFIG"
    say "delete it with: kind delete cluster --name $CLUSTER"
  else
    if [[ $CREATED == 1 ]]; then
      say "deleting cluster '$CLUSTER'"
      kind delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
    fi
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT

# Start a background command that prints a line matching $1 once it serves (the local port it
# took); set BG_PID and BG_LINE.
start_background() {
  local pattern=$1 log="$WORK/background-${#BACKGROUND[@]}.log"
  shift
  "$@" >"$log" 2>&1 &
  BG_PID=$!
  BACKGROUND+=("$BG_PID")
  for _ in $(seq 100); do
    if BG_LINE="$(grep -m1 -E "$pattern" "$log")"; then
      return 0
    fi
    kill -0 "$BG_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$log" >&2
  die "'$*' did not start"
}

# -- images --------------------------------------------------------------------------------

say "building $OPERATOR_IMAGE and $WORKER_IMAGE (images/build.sh with Docker)"
export DOCKER_BUILDKIT=1 # for images/Containerfile.dockerignore beside the Containerfile
CARPOOL_IMAGE_ENGINE=docker CARPOOL_OPERATOR_IMAGE="$OPERATOR_IMAGE" \
  CARPOOL_WORKER_IMAGE="$WORKER_IMAGE" "$BUILD_IMAGES" >/dev/null
for alias in "${WORKER_ALIASES[@]}"; do
  docker tag "$WORKER_IMAGE" "$alias"
done
for image in "${EXTRA_IMAGES[@]}"; do
  docker image inspect "$image" >/dev/null 2>&1 || docker pull "$image" ||
    say "warning: could not pull $image; the nodes will try"
done

# -- cluster -------------------------------------------------------------------------------

say "creating kind cluster '$CLUSTER'"
CREATED=1
kind create cluster --name "$CLUSTER" --config "$KIND_CONFIG" --kubeconfig "$KUBECONFIG" \
  ${NODE_IMAGE:+--image "$NODE_IMAGE"} --wait 180s

say "loading images into the nodes"
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$WORKER_IMAGE" "${WORKER_ALIASES[@]}"
for image in "${EXTRA_IMAGES[@]}"; do
  kind load docker-image --name "$CLUSTER" "$image" ||
    say "warning: could not load $image; the nodes will pull it"
done

# kind nodes have no GPUs and no NVIDIA device plugin. Advertise nvidia.com/gpu as an extended
# resource in each worker node's status (Kubernetes's documented way to advertise one by hand),
# so the scheduler places GPU pods on them; nothing is allocated and the pods run on the CPU.
# The kubelet keeps extended resources it does not manage, until it restarts.
say "faking $GPUS_PER_NODE nvidia.com/gpu on each worker node"
start_background 'Starting to serve on' kubectl proxy --port=0
PROXY="http://${BG_LINE#Starting to serve on }"
PATCH="[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$GPUS_PER_NODE\"},"
PATCH+="{\"op\":\"add\",\"path\":\"/status/allocatable/nvidia.com~1gpu\",\"value\":\"$GPUS_PER_NODE\"}]"
GPU_NODES=()
while IFS= read -r node; do
  GPU_NODES+=("$node")
done < <(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' \
  -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
[[ ${#GPU_NODES[@]} -gt 0 ]] || die "no worker nodes in '$CLUSTER'"
for node in "${GPU_NODES[@]}"; do
  curl -fsS -X PATCH -H 'Content-Type: application/json-patch+json' --data "$PATCH" \
    "$PROXY/api/v1/nodes/$node/status" >/dev/null
  kubectl wait --for=jsonpath='{.status.allocatable.nvidia\.com/gpu}'="$GPUS_PER_NODE" \
    "node/$node" --timeout=60s
done
kill "$BG_PID"

# The tests call worker pods at their pod IPs from this machine. On Linux the kind nodes'
# Docker network is reachable from the host, so route each node's pod CIDR via the node.
if [[ $POD_ROUTES != 0 ]]; then
  if [[ $(uname -s) == Linux ]]; then
    while read -r node cidr ip; do
      [[ -n $cidr && -n $ip ]] || continue
      if ${SUDO[@]+"${SUDO[@]}"} ip route replace "$cidr" via "$ip"; then
        ROUTES+=("$cidr via $ip")
      elif [[ $POD_ROUTES == 1 ]]; then
        die "cannot add the route $cidr via $ip (node $node); run as root or with sudo"
      else
        say "warning: no route to $node's pods ($cidr); tests that call pod IPs will fail"
      fi
    done < <(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}')
  else
    say "warning: pod IPs are not routable from $(uname -s); tests that call pod IPs will fail"
  fi
fi

say "applying the CRDs (server-side)"
kubectl apply --server-side -f "$CRDS/"
kubectl wait --for=condition=Established crd --all --timeout=60s

# -- Prometheus ----------------------------------------------------------------------------

say "installing Prometheus"
if [[ -n $PROMETHEUS_IMAGE ]]; then
  sed "s#image: quay.io/prometheus/prometheus:.*#image: $PROMETHEUS_IMAGE#" "$PROMETHEUS_MANIFEST" |
    kubectl apply -f -
else
  kubectl apply -f "$PROMETHEUS_MANIFEST"
fi
kubectl -n monitoring rollout status deployment/prometheus --timeout=300s

# A node's IP and the NodePort reach Prometheus from this machine (Linux) and from pods alike;
# e2e/test_chart.py hands CARPOOL_PROMETHEUS_URL to an operator running in the cluster.
NODE_IP="$(kubectl get node "$CLUSTER-control-plane" \
  -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')"
CARPOOL_PROMETHEUS_URL="http://$NODE_IP:$PROMETHEUS_NODE_PORT"
if ! curl -fsS --max-time 5 "$CARPOOL_PROMETHEUS_URL/-/ready" >/dev/null 2>&1; then
  say "the node IP is not reachable from here; port-forwarding Prometheus instead"
  say "warning: an operator inside the cluster cannot use that URL (e2e/test_chart.py)"
  start_background 'Forwarding from 127\.0\.0\.1:' \
    kubectl -n monitoring port-forward service/prometheus 0:9090
  CARPOOL_PROMETHEUS_URL="http://$(sed -E 's/^Forwarding from (127\.0\.0\.1:[0-9]+).*/\1/' \
    <<<"$BG_LINE")"
  for _ in $(seq 30); do
    curl -fsS --max-time 5 "$CARPOOL_PROMETHEUS_URL/-/ready" >/dev/null 2>&1 && break
    sleep 1
  done
  curl -fsS --max-time 5 "$CARPOOL_PROMETHEUS_URL/-/ready" >/dev/null ||
    die "Prometheus is not ready at $CARPOOL_PROMETHEUS_URL"
fi
export CARPOOL_PROMETHEUS_URL CARPOOL_WORKER_IMAGE="$WORKER_IMAGE"
say "CARPOOL_PROMETHEUS_URL=$CARPOOL_PROMETHEUS_URL"

# -- tests ---------------------------------------------------------------------------------

# Tests that read CARPOOL_E2E_OPERATOR use the operator the chart installs. The others start
# their own operators (or, e2e/test_chart.py, their own release), which would overlap with a
# cluster-wide chart operator; they run first, before the chart is installed.
CHART_TESTS=()
while IFS= read -r file; do
  CHART_TESTS+=("${file#"$ROOT/"}")
done < <(grep -l 'CARPOOL_E2E_OPERATOR' "$ROOT"/e2e/test_*.py || true)
IGNORES=()
for file in ${CHART_TESTS[@]+"${CHART_TESTS[@]}"}; do
  IGNORES+=("--ignore=$file")
done

FAILED=0
say "running the e2e tests that bring their own operator"
(cd "$ROOT" && env -u CARPOOL_E2E_OPERATOR "$PYTHON" -m pytest e2e \
  ${IGNORES[@]+"${IGNORES[@]}"} "$@") || FAILED=1

say "installing the chart with $OPERATOR_IMAGE"
helm install "$RELEASE" "$CHART" --namespace "$RELEASE_NAMESPACE" --create-namespace \
  --set "operator.image.repository=${OPERATOR_IMAGE%:*}" \
  --set "operator.image.tag=${OPERATOR_IMAGE##*:}" \
  --set operator.image.pullPolicy=IfNotPresent \
  --set "operator.prometheusUrl=http://prometheus.monitoring.svc:9090" \
  --wait --timeout 300s
kubectl -n "$RELEASE_NAMESPACE" rollout status "deployment/$RELEASE-operator" --timeout=180s

if [[ ${#CHART_TESTS[@]} -gt 0 ]]; then
  say "running the e2e tests against the chart's operator: ${CHART_TESTS[*]}"
  (cd "$ROOT" && CARPOOL_E2E_OPERATOR=chart "$PYTHON" -m pytest "${CHART_TESTS[@]}" "$@") ||
    FAILED=1
else
  say "no e2e test reads CARPOOL_E2E_OPERATOR yet; the chart install was the last check"
fi

exit "$FAILED"
