"""Build the control-plane binaries from pinned upstream Go modules, cached on disk.

Contract: ``ensure_binaries()`` returns a ``Binaries`` whose paths all exist and were built
from the versions pinned below. The first call compiles them (tens of minutes on two cores);
later calls return at once from ``~/.cache/carpool/bin/<pin>/`` (override with
``CARPOOL_CACHE_DIR``). Changing a pin changes the cache folder, so a stale binary is never
reused. A failed build raises ``BuildError`` naming the tool and the tail of Go's output.
Two processes may build at once (a test run beside a CI run): each writes its Go modules in a
folder of its own (Go rewrites go.mod and go.sum as it resolves them) and builds into a file of
its own that it moves into place atomically, so neither sees the other's half-written files.
Go's module cache is shared; Go locks it.

Why build from source: this project's machines have no Docker engine (so no kind) and reach
only the Go module proxy, not the release buckets. Every binary is a plain ``go build`` of the
upstream module at a pinned version, nothing patched.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.0"  # the etcd client version k8s.io/kubernetes v1.37.2 requires
HELM_VERSION = "v3.22.0"
# Prometheus 3.16 (its Go module is tagged v0.316.0). Built rather than taken from Debian,
# whose package leaves out Kubernetes service discovery.
PROMETHEUS_VERSION = "v0.316.0"
PROMETHEUS_RELEASE = "3.16.0"

# k8s.io/kubernetes replaces each staging module with a folder of its own repository; a
# module outside that repository must point them at their published tags of the same release.
STAGING_MODULES = [
    "api",
    "apiextensions-apiserver",
    "apimachinery",
    "apiserver",
    "cli-runtime",
    "client-go",
    "cloud-provider",
    "cluster-bootstrap",
    "code-generator",
    "component-base",
    "component-helpers",
    "controller-manager",
    "cri-api",
    "cri-client",
    "cri-streaming",
    "csi-translation-lib",
    "dynamic-resource-allocation",
    "endpointslice",
    "externaljwt",
    "kms",
    "kube-aggregator",
    "kube-controller-manager",
    "kube-proxy",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "metrics",
    "mount-utils",
    "pod-security-admission",
    "sample-apiserver",
    "streaming",
]


class BuildError(RuntimeError):
    """A binary could not be built; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    helm: Path
    prometheus: Path
    promtool: Path

    def as_dict(self) -> dict[str, Path]:
        return dataclasses.asdict(self)


def cache_root() -> Path:
    default = Path.home() / ".cache" / "carpool"
    return Path(os.environ.get("CARPOOL_CACHE_DIR", default))


def bin_root() -> Path:
    return cache_root() / "bin"


def expected() -> Binaries:
    """Where each pinned binary lives: one folder per tool and version, so changing one pin
    rebuilds only that tool."""
    kube = bin_root() / f"kubernetes-{KUBERNETES_VERSION}"
    prom = bin_root() / f"prometheus-{PROMETHEUS_VERSION}"
    return Binaries(
        etcd=bin_root() / f"etcd-{ETCD_VERSION}" / "etcd",
        kube_apiserver=kube / "kube-apiserver",
        kube_controller_manager=kube / "kube-controller-manager",
        kube_scheduler=kube / "kube-scheduler",
        kubectl=kube / "kubectl",
        helm=bin_root() / f"helm-{HELM_VERSION}" / "helm",
        prometheus=prom / "prometheus",
        promtool=prom / "promtool",
    )


def _say(message: str) -> None:
    print(f"[carpool build] {message}", file=sys.stderr, flush=True)


def _run_go(args: list[str], cwd: Path, what: str) -> None:
    if shutil.which("go") is None:
        raise BuildError(f"cannot build {what}: the Go toolchain ('go') is not on PATH")
    env = dict(os.environ, GOFLAGS="-mod=mod -buildvcs=false", CGO_ENABLED="0")
    started = time.monotonic()
    proc = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise BuildError(f"building {what} failed (go {' '.join(args)}):\n{tail}")
    _say(f"{what}: done in {time.monotonic() - started:.0f}s")


def _write_module(folder: Path, name: str, requires: list[str], replaces: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"module carpool.local/build/{name}", "", "go 1.26", ""]
    lines += [f"require {r}" for r in requires]
    lines += [""] + [f"replace {r}" for r in replaces]
    (folder / "go.mod").write_text("\n".join(lines) + "\n")


def _kube_ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    prefix = "k8s.io/component-base/version"
    return " ".join(
        [
            "-s -w",
            f"-X {prefix}.gitVersion={KUBERNETES_VERSION}",
            f"-X {prefix}.gitMajor={major}",
            f"-X {prefix}.gitMinor={minor}",
            f"-X {prefix}.gitTreeState=clean",
            f"-X {prefix}/verflag.programName=kubernetes",
        ]
    )


def _build_kubernetes(work: Path, out: Binaries) -> None:
    folder = work / "kubernetes"
    staging_version = "v0." + KUBERNETES_VERSION.lstrip("v").split(".", 1)[1]
    _write_module(
        folder,
        "kubernetes",
        requires=[f"k8s.io/kubernetes {KUBERNETES_VERSION}"],
        replaces=[f"k8s.io/{m} => k8s.io/{m} {staging_version}" for m in STAGING_MODULES],
    )
    targets = {
        "kube-apiserver": out.kube_apiserver,
        "kube-controller-manager": out.kube_controller_manager,
        "kube-scheduler": out.kube_scheduler,
        "kubectl": out.kubectl,
    }
    for command, path in targets.items():
        if path.exists():
            continue
        _say(f"{command} {KUBERNETES_VERSION}: go build k8s.io/kubernetes/cmd/{command}")
        _go_build(
            path,
            ["-ldflags", _kube_ldflags(), f"k8s.io/kubernetes/cmd/{command}"],
            folder,
            f"{command} {KUBERNETES_VERSION}",
        )


def _build_module(
    work: Path,
    name: str,
    module: str,
    version: str,
    packages: dict[str, Path],
    ldflags: str = "-s -w",
    tags: str = "",
) -> None:
    """Build each ``package -> path`` of one upstream module at ``version``."""
    folder = work / f"{name}-{version}"
    _write_module(folder, name, requires=[f"{module} {version}"], replaces=[])
    for package, path in packages.items():
        if path.exists():
            continue
        _say(f"{path.name} {version}: go build {package}")
        _go_build(
            path, [f"-tags={tags}", "-ldflags", ldflags, package], folder, f"{path.name} {version}"
        )


def _go_build(path: Path, args: list[str], cwd: Path, what: str) -> None:
    """`go build -trimpath -o path ARGS`, through a file of this process's own: a build
    running beside it writes its own, and `os.replace` swaps the finished binary in whole.
    The folder is made first: on a fresh machine nothing has made it yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{path.name}.partial-", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        _run_go(["build", "-trimpath", "-o", str(tmp), *args], cwd, what)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_binaries() -> Binaries:
    """Return the pinned binaries, building the missing ones first."""
    out = expected()
    missing = [name for name, p in out.as_dict().items() if not p.exists()]
    if not missing:
        return out
    cache_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache_root()) as folder:
        _build_all(Path(folder), out, missing)
    return out


def _build_all(work: Path, out: Binaries, missing: list[str]) -> None:
    _say(
        f"building {', '.join(missing)} from the pinned Go modules into {bin_root()} "
        "(first run only: a real etcd, kube-apiserver, controller-manager, scheduler and "
        "Prometheus for the local cluster; expect 15-30 minutes on two cores)"
    )
    _build_module(
        work,
        "etcd",
        "go.etcd.io/etcd/server/v3",
        ETCD_VERSION,
        {"go.etcd.io/etcd/server/v3": out.etcd},
    )
    _build_kubernetes(work, out)
    _build_module(
        work,
        "helm",
        "helm.sh/helm/v3",
        HELM_VERSION,
        {"helm.sh/helm/v3/cmd/helm": out.helm},
        f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
    )
    common = "github.com/prometheus/common/version"
    _build_module(
        work,
        "prometheus",
        "github.com/prometheus/prometheus",
        PROMETHEUS_VERSION,
        {
            "github.com/prometheus/prometheus/cmd/prometheus": out.prometheus,
            "github.com/prometheus/prometheus/cmd/promtool": out.promtool,
        },
        f"-s -w -X {common}.Version={PROMETHEUS_RELEASE} -X {common}.Branch=module",
        # Only the service discovery carpool uses: fewer modules to fetch and compile.
        tags="remove_all_sd,enable_kubernetes_sd",
    )


if __name__ == "__main__":
    for tool, location in ensure_binaries().as_dict().items():
        print(f"{tool}: {location}")
